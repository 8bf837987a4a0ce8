//! Writes o200k_base's mergeable tokens for `src/tokenize.rs`, read out of tiktoken-rs at build
//! time, into OUT_DIR: `o200k_tokens.bin` (every token's bytes, by rank, back to back),
//! `o200k_ends.bin` (each token's end offset in it, little-endian u32) and `o200k_pattern.txt`
//! (the pre-tokenizing pattern). The process then needs no tiktoken-rs tables at run time: loading
//! them built ~40 MB that the allocator kept resident (BENCHMARKS.md, memory per open stream).

use std::error::Error;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let bpe = tiktoken_rs::o200k_base()?;
    let mut tokens = Vec::with_capacity(1 << 21);
    let mut ends = Vec::with_capacity(4 * 200_000);
    let mut rank = 0u32;
    // Mergeable ranks are 0..n without gaps; the special tokens follow a gap.
    while let Ok(token) = bpe.decode_bytes(&[rank]) {
        tokens.extend_from_slice(&token);
        ends.extend_from_slice(&u32::try_from(tokens.len())?.to_le_bytes());
        rank += 1;
    }
    if rank < 100_000 {
        return Err(format!("o200k_base has {rank} mergeable tokens, expected ~200,000").into());
    }
    std::fs::write(out.join("o200k_tokens.bin"), &tokens)?;
    std::fs::write(out.join("o200k_ends.bin"), &ends)?;
    std::fs::write(
        out.join("o200k_pattern.txt"),
        tiktoken_rs::O200K_BASE_PAT_STR,
    )?;
    Ok(())
}
