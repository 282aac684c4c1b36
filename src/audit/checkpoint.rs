//! Signed checkpoints: every `checkpoint_interval` (also when idle) and at shutdown the
//! writer appends a record that signs the chain head — the seq and hash of the record before
//! it — with an Ed25519 key. The hash chain proves order and integrity; the signature proves
//! the chain up to that point came from the holder of the key, so records cannot be
//! rewritten wholesale with a recomputed chain. Records after the last checkpoint are an
//! unsigned tail, which `audit verify` reports with its length.

use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivatePkcs8KeyDer;
use sha2::{Digest, Sha256};

use super::record::hex;

/// What a checkpoint signature covers.
pub fn message(covers_seq: u64, covers_hash: &str) -> Vec<u8> {
    format!("pgwarden audit checkpoint v1\n{covers_seq}\n{covers_hash}\n").into_bytes()
}

/// The signing key, loaded from a PKCS#8 PEM ("PRIVATE KEY") as `pgwarden audit keygen`
/// writes it.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.public_key())
    }
}

impl SigningKey {
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| format!("not a PKCS#8 PEM private key: {e}"))?;
        let pair = Ed25519KeyPair::from_pkcs8(der.secret_pkcs8_der())
            .map_err(|e| format!("not an Ed25519 key: {e}"))?;
        Ok(Self { pair })
    }

    /// A new key as PKCS#8 PEM.
    pub fn generate_pem() -> Result<String, String> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| e.to_string())?;
        let b64 = B64.encode(doc.as_ref());
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(chunk));
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        Ok(pem)
    }

    /// `ed25519:<base64 of the 32-byte public key>`, what reviewers give `audit verify`.
    pub fn public_key(&self) -> String {
        format!("ed25519:{}", B64.encode(self.pair.public_key().as_ref()))
    }

    /// Short identifier of the key, stored in each checkpoint.
    pub fn key_id(&self) -> String {
        key_id(self.pair.public_key().as_ref())
    }

    pub fn sign(&self, covers_seq: u64, covers_hash: &str) -> String {
        B64.encode(self.pair.sign(&message(covers_seq, covers_hash)).as_ref())
    }
}

fn key_id(public_key: &[u8]) -> String {
    hex(&Sha256::digest(public_key)[..8])
}

/// A public key to verify checkpoints with.
#[derive(Debug, Clone)]
pub struct PublicKey {
    bytes: Vec<u8>,
}

impl PublicKey {
    /// Parse `ed25519:<base64>` (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, String> {
        let b64 = text
            .trim()
            .strip_prefix("ed25519:")
            .ok_or("a public key looks like ed25519:<base64> (see `pgwarden audit pubkey`)")?;
        let bytes = B64
            .decode(b64)
            .map_err(|e| format!("bad base64 in public key: {e}"))?;
        if bytes.len() != 32 {
            return Err("an Ed25519 public key is 32 bytes".into());
        }
        Ok(Self { bytes })
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text)
    }

    pub fn key_id(&self) -> String {
        key_id(&self.bytes)
    }

    pub fn verify(&self, covers_seq: u64, covers_hash: &str, signature: &str) -> bool {
        let Ok(signature) = B64.decode(signature) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, &self.bytes)
            .verify(&message(covers_seq, covers_hash), &signature)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_with_the_matching_public_key_only() {
        let key = SigningKey::from_pem(&SigningKey::generate_pem().unwrap()).unwrap();
        let public = PublicKey::parse(&key.public_key()).unwrap();
        assert_eq!(public.key_id(), key.key_id());
        let signature = key.sign(41, "abc");
        assert!(public.verify(41, "abc", &signature));
        assert!(!public.verify(42, "abc", &signature));
        assert!(!public.verify(41, "abd", &signature));
        let other = SigningKey::from_pem(&SigningKey::generate_pem().unwrap()).unwrap();
        assert!(!PublicKey::parse(&other.public_key())
            .unwrap()
            .verify(41, "abc", &signature));
        assert!(SigningKey::from_pem("not a key").is_err());
        assert!(PublicKey::parse("rsa:xyz").is_err());
    }
}
