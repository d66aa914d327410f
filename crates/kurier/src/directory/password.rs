//! Checking a password against its Argon2 hash with memory from a small pool.
//!
//! Each check needs the hash's memory cost (19 MiB with the defaults). Allocated per check,
//! a flood of AUTH attempts grew the server by gigabytes even with few checks at once: the
//! freed blocks stayed with the allocator. The pool keeps at most [`POOLED`] buffers and
//! reuses them, so the memory for password checks is allocated once.

use std::sync::Mutex;

use argon2::password_hash::phc::{Output, PasswordHash};
use argon2::{Algorithm, Argon2, Block, Params, Version};

/// Buffers kept for reuse (one per password check that may run at once).
pub const POOLED: usize = 2;

static POOL: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());

/// True when `password` matches the PHC string `hash` (argon2id/argon2i/argon2d). A hash
/// that cannot be read never matches.
pub fn verify(password: &[u8], hash: &str) -> bool {
    let Ok(hash) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(hash.algorithm.as_str()) else {
        return false;
    };
    let version = match hash.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Ok(params) = Params::try_from(&hash) else {
        return false;
    };
    let blocks = params.block_count();
    let argon2 = Argon2::new(algorithm, version, params);
    let mut memory = take(blocks);
    let mut out = vec![0u8; expected.len()];
    let hashed = argon2.hash_password_into_with_memory(password, salt, &mut out, &mut memory[..]);
    give_back(memory);
    // `Output` compares in constant time.
    hashed.is_ok() && Output::new(&out).is_ok_and(|o| &o == expected)
}

/// A buffer of at least `blocks` blocks (its contents are overwritten by the hash).
fn take(blocks: usize) -> Vec<Block> {
    let pooled = POOL.lock().unwrap_or_else(|p| p.into_inner()).pop();
    match pooled {
        Some(mut m) if m.len() >= blocks => {
            m.truncate(blocks);
            m
        }
        _ => vec![Block::default(); blocks],
    }
}

fn give_back(memory: Vec<Block>) {
    let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
    if pool.len() < POOLED {
        pool.push(memory);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use argon2::PasswordVerifier;

    #[test]
    fn agrees_with_the_library_verifier() {
        let hash = crate::directory::users::hash_password("right horse").unwrap();
        assert!(verify(b"right horse", &hash));
        assert!(!verify(b"wrong horse", &hash));
        assert!(
            Argon2::default()
                .verify_password(b"right horse", hash.as_str())
                .is_ok()
        );
        // Again, with pooled memory.
        assert!(verify(b"right horse", &hash));
        assert!(!verify(b"", &hash));
        assert!(!verify(
            b"right horse",
            "$argon2id$v=19$m=19456,t=2,p=1$garbage"
        ));
        assert!(!verify(b"right horse", "not a hash"));
    }
}
