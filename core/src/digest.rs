//! Short SHA-256 digests, in hex: the ids and fingerprints the operator derives from names and
//! keys (grant ids, key fingerprints, restore-test and export names).

/// The first `hex_digits` hex digits of the SHA-256 of `data`.
pub fn sha256_hex(data: &[u8], hex_digits: usize) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    hex.truncate(hex_digits);
    hex
}
