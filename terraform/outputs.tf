# What the next steps need (docs/DEPLOY.md). No output carries a secret: the relay's
# environment is read from Secrets Manager by its ARN.

output "region" {
  description = "AWS region everything was created in."
  value       = var.region
}

output "vpc_id" {
  description = "VPC id (the AWS Load Balancer Controller's --set vpcId)."
  value       = aws_vpc.main.id
}

output "cluster_name" {
  description = "EKS cluster name: aws eks update-kubeconfig --name <this>."
  value       = aws_eks_cluster.main.name
}

output "cluster_endpoint" {
  description = "EKS API endpoint; reachable from admin_cidrs and from inside the VPC."
  value       = aws_eks_cluster.main.endpoint
}

output "relay_role_arn" {
  description = "IAM role of the relay pods: the eks.amazonaws.com/role-arn annotation of deploy/k8s/serviceaccount.yaml."
  value       = aws_iam_role.relay.arn
}

output "lb_controller_role_arn" {
  description = "IAM role of the AWS Load Balancer Controller's service account (kube-system/aws-load-balancer-controller)."
  value       = aws_iam_role.lb_controller.arn
}

output "photo_bucket" {
  description = "Photo bucket name: S3_BUCKET in deploy/k8s/configmap.yaml."
  value       = aws_s3_bucket.photos.bucket
}

output "ecr_repository_url" {
  description = "Where to push the relay image."
  value       = aws_ecr_repository.relay.repository_url
}

output "relay_secret_arn" {
  description = "Secrets Manager secret with DATABASE_URL, REDIS_URL and ID_HASH_KEY, to copy into the Kubernetes Secret homepocket-relay."
  value       = aws_secretsmanager_secret.relay.arn
}

output "database_endpoint" {
  description = "RDS PostgreSQL endpoint (host:port)."
  value       = aws_db_instance.main.endpoint
}

output "redis_primary_endpoint" {
  description = "ElastiCache primary endpoint; it follows a failover."
  value       = aws_elasticache_replication_group.main.primary_endpoint_address
}

output "certificate_validation_records" {
  description = "DNS records to create where var.domain_name lives, so ACM issues the ALB's certificate."
  value = [for o in aws_acm_certificate.relay.domain_validation_options : {
    name  = o.resource_record_name
    type  = o.resource_record_type
    value = o.resource_record_value
  }]
}
