//! `{cipher}` values, in the format of Spring Cloud Config's symmetric `encrypt.key`:
//! AES-256-CBC with PKCS#7 padding, the key derived by PBKDF2-HMAC-SHA1 (1024 rounds)
//! from the key text and the hex salt (`deadbeef` unless set), a random 16-byte IV in
//! front of the ciphertext, the whole as lower-case hex. A repository encrypted by
//! Spring decrypts here, and the other way round.

use aes::Aes256;
use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use rand::RngCore;

/// Spring's default salt.
pub const DEFAULT_SALT: &str = "deadbeef";
/// The PBKDF2 rounds Spring Security uses for its standard encryptor.
const ROUNDS: u32 = 1024;
/// The prefix that marks an encrypted value.
pub const CIPHER_PREFIX: &str = "{cipher}";

/// A value that cannot be decrypted, or a key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CipherError {
    /// The salt is not hex.
    #[error("encrypt.salt must be hex")]
    BadSalt,
    /// The text is not hex, too short, or the padding is wrong (wrong key).
    #[error("cannot decrypt: {0}")]
    Undecryptable(&'static str),
}

/// A symmetric key, derived once.
#[derive(Clone)]
pub struct Cipher {
    key: [u8; 32],
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(..)")
    }
}

impl Cipher {
    /// Derives the key from the key text and the hex salt.
    pub fn new(key: &str, salt_hex: &str) -> Result<Self, CipherError> {
        let salt = hex::decode(salt_hex).map_err(|_| CipherError::BadSalt)?;
        let mut derived = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<sha1::Sha1>(key.as_bytes(), &salt, ROUNDS, &mut derived);
        Ok(Cipher { key: derived })
    }

    /// Encrypts with a fresh random IV; hex text.
    pub fn encrypt(&self, plain: &str) -> String {
        let mut iv = [0u8; 16];
        rand::rng().fill_bytes(&mut iv);
        self.encrypt_with_iv(plain, iv)
    }

    fn encrypt_with_iv(&self, plain: &str, iv: [u8; 16]) -> String {
        let encryptor = cbc::Encryptor::<Aes256>::new(&self.key.into(), &iv.into());
        let ciphertext = encryptor.encrypt_padded_vec::<Pkcs7>(plain.as_bytes());
        let mut out = Vec::with_capacity(16 + ciphertext.len());
        out.extend_from_slice(&iv);
        out.extend_from_slice(&ciphertext);
        hex::encode(out)
    }

    /// Decrypts hex text made by [`Cipher::encrypt`] or by Spring.
    pub fn decrypt(&self, hex_text: &str) -> Result<String, CipherError> {
        let bytes = hex::decode(hex_text.trim()).map_err(|_| CipherError::Undecryptable("not hex"))?;
        if bytes.len() < 32 || bytes.len() % 16 != 0 {
            return Err(CipherError::Undecryptable("wrong length"));
        }
        let (iv, ciphertext) = bytes.split_at(16);
        let iv: [u8; 16] = iv.try_into().map_err(|_| CipherError::Undecryptable("wrong length"))?;
        let decryptor = cbc::Decryptor::<Aes256>::new(&self.key.into(), &iv.into());
        let plain = decryptor
            .decrypt_padded_vec::<Pkcs7>(ciphertext)
            .map_err(|_| CipherError::Undecryptable("wrong key or corrupted text"))?;
        String::from_utf8(plain).map_err(|_| CipherError::Undecryptable("wrong key or corrupted text"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypts_and_decrypts_with_a_random_iv() {
        let cipher = Cipher::new("s3cret", DEFAULT_SALT).unwrap();
        let a = cipher.encrypt("db-password");
        let b = cipher.encrypt("db-password");
        assert_ne!(a, b, "a fresh IV each time");
        assert_eq!(cipher.decrypt(&a).unwrap(), "db-password");
        assert_eq!(cipher.decrypt(&b).unwrap(), "db-password");
    }

    #[test]
    fn a_wrong_key_or_bad_text_is_an_error_never_garbage() {
        let cipher = Cipher::new("s3cret", DEFAULT_SALT).unwrap();
        let other = Cipher::new("other", DEFAULT_SALT).unwrap();
        let text = cipher.encrypt("value");
        assert!(other.decrypt(&text).is_err() || other.decrypt(&text).unwrap() != "value");
        for bad in ["zz", "00", &"0".repeat(48), ""] {
            assert!(cipher.decrypt(bad).is_err(), "{bad}");
        }
        assert_eq!(Cipher::new("k", "nothex").unwrap_err(), CipherError::BadSalt);
    }

    #[test]
    fn decrypts_the_example_of_spring_cloud_configs_documentation() {
        // The ciphertext Spring's reference guide shows for `mysecret` under key `foo`.
        let cipher = Cipher::new("foo", DEFAULT_SALT).unwrap();
        let spring = "682bc583f4641835fa2db009355293665d2647dade3375c0ee201de2a49f7bda";
        assert_eq!(cipher.decrypt(spring).unwrap(), "mysecret");
    }

    #[test]
    fn the_format_is_iv_then_ciphertext_in_hex() {
        let cipher = Cipher::new("key", DEFAULT_SALT).unwrap();
        let text = cipher.encrypt_with_iv("x", [7u8; 16]);
        assert!(text.starts_with(&"07".repeat(16)));
        assert_eq!(text.len(), 64, "16 bytes of IV and one block");
    }
}
