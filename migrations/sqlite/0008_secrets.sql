-- Secrets for tasks' environments (Marathon's `secrets`), sealed with ChaCha20-Poly1305 under a key kept
-- outside the store (--secrets-key-file); the name is bound to its ciphertext as associated data.
CREATE TABLE secrets (
    name       TEXT PRIMARY KEY,
    nonce      TEXT NOT NULL,   -- base64, 12 random bytes per write
    ciphertext TEXT NOT NULL,   -- base64
    updated_at BIGINT NOT NULL  -- milliseconds since the Unix epoch
);
