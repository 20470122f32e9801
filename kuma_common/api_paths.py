"""Paths of the control plane's REST API that `kumactl` calls besides the resource paths."""

TOKENS_PATH = "/tokens/dataplane"
REVOCATIONS_PATH = "/tokens/dataplane/revocations"
SIGNING_KEYS_PATH = "/tokens/dataplane/signing-keys"
USER_TOKENS_PATH = "/tokens/user"
