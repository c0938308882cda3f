# Inputs. Defaults follow the PRD (section 5): Tokyo first, sized for ~1,000 active
# users. No variable holds a secret: passwords and keys are generated (secrets.tf).

variable "region" {
  description = "AWS region. The PRD starts in Tokyo."
  type        = string
  default     = "ap-northeast-1"
}

variable "environment" {
  description = "Environment name, part of every resource name (homepocket-<environment>-...)."
  type        = string
  default     = "prod"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,15}$", var.environment))
    error_message = "Use 2-16 lowercase letters, digits or dashes."
  }
}

variable "availability_zones" {
  description = "The three AZs of the VPC, named explicitly so the layout never shifts when AWS adds a zone (PRD 5.2: a, c and d in Tokyo)."
  type        = list(string)
  default     = ["ap-northeast-1a", "ap-northeast-1c", "ap-northeast-1d"]

  validation {
    condition     = length(var.availability_zones) == 3
    error_message = "Give exactly three AZs."
  }
}

variable "vpc_cidr" {
  description = "VPC address range; split into public, private and database subnets over three AZs. The Kubernetes NetworkPolicy and TRUSTED_PROXIES assume 10.0.0.0/16."
  type        = string
  default     = "10.0.0.0/16"
}

variable "single_nat_gateway" {
  description = "One NAT gateway for all three AZs (cheaper; outbound traffic of the nodes fails over with the AZ) instead of one per AZ."
  type        = bool
  default     = true
}

variable "admin_cidrs" {
  description = "Addresses allowed to reach the EKS API endpoint from the internet (your office or VPN). Never 0.0.0.0/0."
  type        = list(string)

  validation {
    condition     = length(var.admin_cidrs) > 0 && !contains(var.admin_cidrs, "0.0.0.0/0")
    error_message = "Give at least one CIDR, and not 0.0.0.0/0."
  }
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version."
  type        = string
  default     = "1.33"
}

variable "node_instance_type" {
  description = "EC2 type of the EKS worker nodes (PRD 5.4: t3.small)."
  type        = string
  default     = "t3.small"
}

variable "node_count" {
  description = "Desired, minimum and maximum worker nodes. The minimum keeps one node per AZ."
  type = object({
    desired = number
    min     = number
    max     = number
  })
  default = {
    desired = 3
    min     = 3
    max     = 6
  }
}

variable "db_instance_class" {
  description = "RDS instance class (PRD 5.4: db.t4g.small, Multi-AZ)."
  type        = string
  default     = "db.t4g.small"
}

variable "db_allocated_storage_gb" {
  description = "Initial RDS storage in GiB; storage autoscaling may grow it to db_max_allocated_storage_gb."
  type        = number
  default     = 20
}

variable "db_max_allocated_storage_gb" {
  description = "Upper bound of RDS storage autoscaling in GiB."
  type        = number
  default     = 100
}

variable "db_backup_retention_days" {
  description = "Days RDS keeps automated backups (point-in-time recovery window)."
  type        = number
  default     = 7
}

variable "redis_node_type" {
  description = "ElastiCache node type (PRD 5.4: cache.t4g.micro)."
  type        = string
  default     = "cache.t4g.micro"
}

variable "redis_replicas" {
  description = "Cache nodes in the replication group: one primary plus replicas in other AZs (PRD 5.4: 2)."
  type        = number
  default     = 2

  validation {
    condition     = var.redis_replicas >= 2
    error_message = "Automatic failover needs at least 2 nodes."
  }
}

variable "photo_bucket_name" {
  description = "Name of the photo bucket; empty makes homepocket-<environment>-photos-<account id>."
  type        = string
  default     = ""
}

variable "allowed_origins" {
  description = "Exact browser origins (https://app.example.com) allowed to PUT and GET photos by CORS; the same list as the server's ALLOWED_ORIGINS. Empty: phone apps only, no CORS rule."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for o in var.allowed_origins : can(regex("^https?://[^/*]+$", o))])
    error_message = "Each origin is scheme://host[:port], without a path or a wildcard."
  }
}

variable "domain_name" {
  description = "Public host name of the relay (relay.example.com); terraform requests its ACM certificate."
  type        = string
}

variable "relay_namespace" {
  description = "Kubernetes namespace of the relay (deploy/k8s/namespace.yaml)."
  type        = string
  default     = "homepocket"
}

variable "relay_service_account" {
  description = "Kubernetes service account of the relay (deploy/k8s/serviceaccount.yaml); only it may assume the relay's IAM role."
  type        = string
  default     = "homepocket-relay"
}

variable "lb_controller_policy_arn" {
  description = "ARN of the IAM policy of the AWS Load Balancer Controller (created from the controller's published iam_policy.json, see docs/DEPLOY.md). Empty: the controller's role gets no policy yet."
  type        = string
  default     = ""
}

variable "log_retention_days" {
  description = "Days CloudWatch keeps EKS control-plane, VPC flow and RDS logs. Short on purpose: flow logs hold client addresses."
  type        = number
  default     = 30
}
