# oubli's Vault / OpenBao policy: least privilege on its Transit mount.
#
# Written for the mount "transit" (OUBLI_VAULT_MOUNT): for another mount, replace
# "transit/" below. The operator enables the mount once, as an admin:
#
#   bao secrets enable -path=transit transit
#   bao policy write oubli deploy/vault/oubli-policy.hcl
#
# oubli then writes the mount's settings at every start (disable_upsert, the key cache
# size); it may neither list, enable nor disable mounts (no sys/ path at all), nor
# export, back up or restore a key. tests/integration/test_vault_policy.py installs this
# very file on a real OpenBao and checks both what it allows and what it refuses.

# Subject, bucket and signing keys: create (non-exportable), read (exists, versions,
# public keys), delete (crypto-shredding).
path "transit/keys/+" {
  capabilities = ["create", "read", "update", "delete"]
}

# deletion_allowed after create; minimum decryption/encryption versions (rotation).
path "transit/keys/+/config" {
  capabilities = ["update"]
}

# Key rotation, and trimming the old versions once backups holding them expired.
path "transit/keys/+/rotate" {
  capabilities = ["update"]
}
path "transit/keys/+/trim" {
  capabilities = ["update"]
}

# A new DEK (plaintext and wrapped), unwrapping DEKs (single and batch), re-wrapping
# DEKs under a key's latest version.
path "transit/datakey/plaintext/+" {
  capabilities = ["update"]
}
path "transit/decrypt/+" {
  capabilities = ["update"]
}
path "transit/rewrap/+" {
  capabilities = ["update"]
}

# Audit checkpoints and shred receipts: Ed25519 signatures and their checks.
path "transit/sign/+" {
  capabilities = ["update"]
}
path "transit/verify/+" {
  capabilities = ["update"]
}

# The mount's settings oubli relies on, written at every start.
path "transit/config/keys" {
  capabilities = ["read", "update"]
}
path "transit/cache-config" {
  capabilities = ["read", "update"]
}

# Its own token: look up its ttl, renew it (also in Vault's "default" policy; listed so
# that a role with token_no_default_policy still works).
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
