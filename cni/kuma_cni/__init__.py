"""`kuma-cni`: a chained CNI plugin that installs Kuma's transparent-proxy redirection in a pod's
network namespace; `kuma-cni-install`: chains it into a node's CNI configuration."""
