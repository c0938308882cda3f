# The photo bucket. Clients PUT and GET ciphertext through presigned URLs; only the
# relay's role signs them. Keys: photos/{book_ref}/{photo_id} and
# snapshots/{book_ref}/{snapshot_id} (docs/CONTRACT.md §3), no raw id anywhere.
locals {
  photo_bucket = coalesce(var.photo_bucket_name, "${local.name}-photos-${local.account_id}")
  # The only prefixes the relay writes; its IAM policy names nothing else.
  relay_prefixes = ["photos/", "snapshots/"]
  # An upload the server has not seen completed carries this tag (see lifecycle below).
  pending_tag = { key = "upload", value = "pending" }
}

resource "aws_s3_bucket" "photos" {
  #checkov:skip=CKV_AWS_18:Access logs would record every requester's IP and object key per photo GET; the privacy rules (docs/CONTRACT.md §7) keep no such trail.
  #checkov:skip=CKV_AWS_21:Versioning would keep erased ciphertext as noncurrent versions; DELETE /books and DELETE /photos must really delete (docs/CONTRACT.md §3). Objects are written once and never overwritten.
  #checkov:skip=CKV_AWS_144:A cross-region replica is a second copy every erasure must reach, and needs versioning (see CKV_AWS_21); S3 Standard's multi-AZ durability is enough for ciphertext whose owners hold the originals.
  #checkov:skip=CKV2_AWS_62:No consumer exists for object events; the server learns of uploads from its complete call.
  bucket        = local.photo_bucket
  force_destroy = false
}

resource "aws_s3_bucket_ownership_controls" "photos" {
  bucket = aws_s3_bucket.photos.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "photos" {
  bucket                  = aws_s3_bucket.photos.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

# SSE-KMS with the project key; the bucket key keeps KMS requests (and cost) low.
resource "aws_s3_bucket_server_side_encryption_configuration" "photos" {
  bucket = aws_s3_bucket.photos.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.main.arn
    }
    bucket_key_enabled = true
  }
}

# TLS only (and TLS 1.2 at least), for the relay and for presigned URLs alike.
data "aws_iam_policy_document" "photos_bucket" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.photos.arn,
      "${aws_s3_bucket.photos.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  statement {
    sid     = "DenyOldTLS"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.photos.arn,
      "${aws_s3_bucket.photos.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "NumericLessThan"
      variable = "s3:TlsVersion"
      values   = ["1.2"]
    }
  }
}

resource "aws_s3_bucket_policy" "photos" {
  bucket     = aws_s3_bucket.photos.id
  policy     = data.aws_iam_policy_document.photos_bucket.json
  depends_on = [aws_s3_bucket_public_access_block.photos]
}

# Browser clients (ALLOWED_ORIGINS) PUT and GET through presigned URLs. The browser
# sets Content-Length itself; the signature binds it to the declared size.
resource "aws_s3_bucket_cors_configuration" "photos" {
  count  = length(var.allowed_origins) > 0 ? 1 : 0
  bucket = aws_s3_bucket.photos.id

  cors_rule {
    allowed_methods = ["PUT", "GET"]
    allowed_origins = var.allowed_origins
    allowed_headers = ["Content-Type", "x-amz-*"]
    expose_headers  = ["ETag"]
    max_age_seconds = 600
  }
}

# Abandoned uploads (docs/CONTRACT.md §3: never completed, removed after 24 h).
#
# An upload and a completed object share one key (photos/{book_ref}/{photo_id}),
# so no prefix can tell them apart, and a lifecycle rule cannot read the server's
# database. Two rules do what a bucket can do:
# - objects still tagged upload=pending expire one day after they were written
#   (a presigned PUT may carry `x-amz-tagging: upload=pending` in its signed
#   headers, the complete call then removes the tag; an untagged object is never
#   touched by this rule). S3 counts lifecycle days to the next midnight UTC, so
#   this acts 24 to 48 hours after the upload: a backstop, not the exact 24 h;
# - multipart uploads never finished are aborted after a day.
# The exact job (rows and objects of uploads not completed within 24 h, and the
# quota they held) is the server's own sweeper, which runs the same way on S3 and
# on the local folder; docs/DEPLOY.md says more.
resource "aws_s3_bucket_lifecycle_configuration" "photos" {
  bucket = aws_s3_bucket.photos.id

  rule {
    id     = "expire-pending-uploads"
    status = "Enabled"
    filter {
      tag {
        key   = local.pending_tag.key
        value = local.pending_tag.value
      }
    }
    expiration {
      days = 1
    }
  }

  rule {
    id     = "abort-incomplete-multipart"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}
