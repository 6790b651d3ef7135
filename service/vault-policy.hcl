# One agent's access to its own stored ChatGPT credential in Vault/OpenBao (KV version 2 at
# "secret/"), and nothing else. Replace AGENT with the agent's name, write it as a policy of
# its own, and give that agent's service a token (or an AppRole) with only this policy:
#
#   sed 's/AGENT/alice/g' service/vault-policy.hcl | bao policy write chatgpt-login-alice -
#   bao token create -policy=chatgpt-login-alice -period=24h -field=token > vault_token
#
# (the token into a file of mode 0600, not onto the terminal: `umask 077` first).
#
# The service then runs with CHATGPT_LOGIN_SECRETS_BACKEND=vault and
# CHATGPT_LOGIN_VAULT_PATH=chatgpt-login/alice. Looking up and renewing its own token come with
# Vault's "default" policy, which tokens get unless created with -no-default-policy.

# Read the stored copy and write new versions of it (every write is a check-and-set).
path "secret/data/chatgpt-login/AGENT" {
  capabilities = ["create", "read", "update"]
}

# After a logout, the older versions (they hold the signed-out credential) are destroyed.
path "secret/metadata/chatgpt-login/AGENT" {
  capabilities = ["read"]
}
path "secret/destroy/chatgpt-login/AGENT" {
  capabilities = ["update"]
}
