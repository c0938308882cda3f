# IAM for workloads, through IRSA: a role is assumable only by one Kubernetes service
# account of this cluster. No static access key exists.

# ---- The relay ----------------------------------------------------------------------

data "aws_iam_policy_document" "relay_assume" {
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [aws_iam_openid_connect_provider.eks.arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:sub"
      values   = ["system:serviceaccount:${var.relay_namespace}:${var.relay_service_account}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "relay" {
  name               = "${local.name}-relay"
  assume_role_policy = data.aws_iam_policy_document.relay_assume.json
}

# What the relay does with S3 and nothing more: sign PUT and GET URLs, HEAD an
# object to complete an upload, delete objects (photo, book erasure, sweeper), and
# tag or untag pending uploads, all inside its two prefixes. It can neither read
# nor change the bucket's configuration, nor any other bucket.
data "aws_iam_policy_document" "relay" {
  statement {
    sid = "ObjectsInRelayPrefixes"
    actions = [
      "s3:PutObject",
      "s3:GetObject",
      "s3:DeleteObject",
      "s3:PutObjectTagging",
      "s3:GetObjectTagging",
      "s3:DeleteObjectTagging",
    ]
    resources = [for p in local.relay_prefixes : "${aws_s3_bucket.photos.arn}/${p}*"]
  }

  # Listing is what makes S3 answer a HEAD on a missing key with 404 rather than 403
  # (the complete call's "absent" case) and lets the sweeper walk its prefixes.
  statement {
    sid       = "ListRelayPrefixes"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.photos.arn]
  }

  # The bucket is SSE-KMS: writing and reading objects needs the key, through S3 only.
  statement {
    sid       = "BucketKeyViaS3"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = [aws_kms_key.main.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "relay" {
  name   = "photo-bucket"
  role   = aws_iam_role.relay.id
  policy = data.aws_iam_policy_document.relay.json
}

# ---- AWS Load Balancer Controller (makes the ALB of deploy/k8s/ingress.yaml) --------

data "aws_iam_policy_document" "lb_controller_assume" {
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [aws_iam_openid_connect_provider.eks.arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:sub"
      values   = ["system:serviceaccount:kube-system:aws-load-balancer-controller"]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "lb_controller" {
  name               = "${local.name}-lb-controller"
  assume_role_policy = data.aws_iam_policy_document.lb_controller_assume.json
}

# The controller's policy is the one its project publishes for each release; it is
# created from that file (docs/DEPLOY.md) rather than copied here, so it follows the
# controller version installed.
resource "aws_iam_role_policy_attachment" "lb_controller" {
  count      = var.lb_controller_policy_arn == "" ? 0 : 1
  role       = aws_iam_role.lb_controller.name
  policy_arn = var.lb_controller_policy_arn
}
