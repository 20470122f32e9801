"""`kuma-init`: the init-container program that installs and validates transparent proxying."""
