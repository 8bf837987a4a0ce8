//! Token estimates with a real tokenizer (o200k_base, the GPT-4o family's): a call's prompt
//! estimate for the token limits, and usage when a provider reports none (records so estimated
//! are flagged).
//!
//! The vocabulary and the pre-tokenizing pattern are tiktoken-rs's, read out of it at build time
//! (build.rs) and compiled in; the counting is done here. Loading tiktoken-rs's encoder at run time
//! built ~40 MB of tables (each of the 199,998 tokens three times, in separate allocations), ~32 MB
//! of which stayed resident: a sixth of the memory budget of 5,000 open streams (BENCHMARKS.md).
//! Here the tokens' bytes are one static buffer and a hash table of ranks points into it: ~2 MB
//! on the heap, built in milliseconds. Counts equal tiktoken-rs's `encode_ordinary(..).len()`
//! (tests below, against it), except inside a single pre-token longer than 4 KB, which is counted
//! 4 KB at a time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::BuildHasher;
use std::sync::OnceLock;

use crate::types::{ChatRequest, ContentPart};

/// Pre-tokens longer than this are merged this many bytes at a time: merging needs ~24 bytes of
/// state per byte of the piece, and a 30 MB body of one letter would otherwise be one piece.
const MAX_PIECE: usize = 4096;

/// o200k_base's mergeable tokens' bytes, by rank, back to back (build.rs).
static TOKENS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/o200k_tokens.bin"));
/// Each token's end offset in `TOKENS`, little-endian u32s.
static TOKEN_ENDS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/o200k_ends.bin"));
/// tiktoken's pre-tokenizing pattern for o200k_base.
static PATTERN: &str = include_str!(concat!(env!("OUT_DIR"), "/o200k_pattern.txt"));

/// o200k_base's mergeable tokens, by rank: token `r` is `bytes[ends[r - 1]..ends[r]]`.
struct Vocabulary {
    bytes: &'static [u8],
    ends: Box<[u32]>,
    /// Ranks, hashed by their token's bytes.
    ranks: hashbrown::HashTable<u32>,
    hasher: rustc_hash::FxBuildHasher,
    /// The pre-tokenizer: the text is split by it and each piece is merged on its own (see
    /// `pre_tokenizer`).
    pieces: regex_automata::meta::Regex,
}

/// The end of tiktoken's o200k pattern: a whitespace run not followed by a non-space (`(?!\S)`:
/// the run to the end of the text, or all of it but its last character, which then starts the
/// next piece), else one whitespace character.
const LOOKAHEAD_TAIL: &str = r"|\s+(?!\S)|\s+";

/// tiktoken's pattern without its one look-around, so that a DFA-based regex (regex-automata)
/// runs it instead of a backtracking one (fancy-regex): a short chat's estimate 2.0 → 1.3 µs, a
/// 10 KB document's count 602 → 289 µs (criterion, BENCHMARKS.md, fifteenth session). The
/// look-ahead alternative becomes two patterns of one multi-pattern regex, tried in order:
/// pattern 0 is the rest of tiktoken's alternatives plus `\s+$` (a run to the end of the text);
/// pattern 1, `\s+\s`, is a run of two or more characters whose last character is the
/// look-ahead, given back to the next piece (`count`); pattern 2, `\s+`, is the one character
/// left. Leftmost-first order over the patterns is the alternation's order, so the pieces are
/// tiktoken's (tests compare with tiktoken-rs, which runs the original pattern). `None` if the
/// pattern does not end as o200k's does.
fn pre_tokenizer(pattern: &str) -> Option<regex_automata::meta::Regex> {
    let head = pattern.strip_suffix(LOOKAHEAD_TAIL)?;
    let first = format!("{head}|\\s+$");
    regex_automata::meta::Regex::new_many(&[first.as_str(), r"\s+\s", r"\s+"]).ok()
}

/// The pattern whose match ends with a look-ahead character (see `pre_tokenizer`).
const LOOKAHEAD_PATTERN: usize = 1;

/// A rank that is no token: pairs that do not merge.
const NONE: u32 = u32::MAX;

impl Vocabulary {
    /// `None` only if the compiled-in pattern is not o200k's (it is: tests).
    fn o200k_base() -> Option<Vocabulary> {
        let ends = TOKEN_ENDS
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let mut v = Vocabulary {
            bytes: TOKENS,
            ends,
            ranks: hashbrown::HashTable::new(),
            hasher: rustc_hash::FxBuildHasher,
            pieces: pre_tokenizer(PATTERN)?,
        };
        let mut ranks = hashbrown::HashTable::with_capacity(v.ends.len());
        for r in 0..v.ends.len() as u32 {
            let hash = v.hasher.hash_one(v.token(r));
            ranks.insert_unique(hash, r, |&x| v.hasher.hash_one(v.token(x)));
        }
        v.ranks = ranks;
        Some(v)
    }

    fn token(&self, rank: u32) -> &[u8] {
        let r = rank as usize;
        let start = if r == 0 { 0 } else { self.ends[r - 1] as usize };
        &self.bytes[start..self.ends[r] as usize]
    }

    fn rank(&self, bytes: &[u8]) -> u32 {
        let hash = self.hasher.hash_one(bytes);
        self.ranks
            .find(hash, |&r| self.token(r) == bytes)
            .copied()
            .unwrap_or(NONE)
    }

    fn count(&self, text: &str) -> u64 {
        use regex_automata::{Anchored, Input};
        let mut total = 0u64;
        let mut at = 0;
        while at < text.len() {
            // Each piece starts where the last one ended. The pattern matches every character
            // (letters, digits, whitespace, anything else), so the anchored search finds one; if
            // it did not, the next match further on is taken, as tiktoken's `find_iter` would.
            let input = Input::new(text).range(at..);
            let Some(m) = self
                .pieces
                .find(input.clone().anchored(Anchored::Yes))
                .or_else(|| self.pieces.find(input))
            else {
                break;
            };
            let mut end = m.end();
            if m.pattern().as_usize() == LOOKAHEAD_PATTERN {
                // Two or more whitespace characters: the last is the look-ahead, and the next
                // piece starts with it.
                end -= text[m.start()..end]
                    .chars()
                    .next_back()
                    .map_or(0, char::len_utf8);
            }
            if end <= at {
                break; // no pattern matches nothing; never loop in place
            }
            for piece in text.as_bytes()[m.start()..end].chunks(MAX_PIECE) {
                total += self.piece_tokens(piece) as u64;
            }
            at = end;
        }
        total
    }

    /// Tokens of one pre-token: byte-pair merging, always merging the adjacent pair whose joined
    /// bytes have the lowest rank (the leftmost of equals), until no adjacent pair is a token.
    fn piece_tokens(&self, piece: &[u8]) -> usize {
        let n = piece.len();
        if n <= 1 || self.rank(piece) != NONE {
            return n.min(1);
        }
        // Parts are ranges of the piece named by their start: part `s` is `piece[s..end[s]]`,
        // `prev[s]` is the start of the part before it, and `pair[s]` the rank of part `s` joined
        // with the part after it. A heap holds candidate merges; an entry whose rank no longer
        // equals `pair[start]` is stale and skipped (a pair's bytes only grow, so a live pair
        // never repeats an earlier rank).
        let mut end: Vec<u32> = (1..=n as u32).collect();
        let mut prev: Vec<u32> = (0..n as u32).map(|s| s.wrapping_sub(1)).collect();
        let mut pair = vec![NONE; n];
        let mut heap = BinaryHeap::with_capacity(n);
        for s in 0..n - 1 {
            pair[s] = self.rank(&piece[s..s + 2]);
            if pair[s] != NONE {
                heap.push(Reverse((pair[s], s as u32)));
            }
        }
        let mut parts = n;
        while let Some(Reverse((rank, s))) = heap.pop() {
            let start = s as usize;
            if pair[start] != rank {
                continue;
            }
            // Join part `start` with the next one.
            let next = end[start] as usize;
            let joined_end = end[next];
            end[start] = joined_end;
            pair[next] = NONE;
            parts -= 1;
            pair[start] = if (joined_end as usize) < n {
                prev[joined_end as usize] = s;
                self.rank(&piece[start..end[joined_end as usize] as usize])
            } else {
                NONE
            };
            if pair[start] != NONE {
                heap.push(Reverse((pair[start], s)));
            }
            let before = prev[start];
            if before != NONE {
                let b = before as usize;
                pair[b] = self.rank(&piece[b..joined_end as usize]);
                if pair[b] != NONE {
                    heap.push(Reverse((pair[b], before)));
                }
            }
        }
        parts
    }
}

fn vocabulary() -> Option<&'static Vocabulary> {
    static VOCABULARY: OnceLock<Option<Vocabulary>> = OnceLock::new();
    VOCABULARY
        .get_or_init(|| {
            let v = Vocabulary::o200k_base();
            if v.is_none() {
                tracing::error!(
                    "the o200k_base tokenizer failed to build; counting ~4 bytes a token"
                );
            }
            v
        })
        .as_ref()
}

/// Builds the tokenizer's rank table (~2 MB, a few ms of CPU) now, so the first call that counts
/// tokens does not wait for them. Blocking: `serve` runs it on a blocking thread at start-up.
pub fn warm() {
    vocabulary();
}

/// Tokens of a text.
pub fn count(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    match vocabulary() {
        Some(v) => v.count(text),
        None => (text.len() as u64).div_ceil(4),
    }
}

/// Where a growing text can be cut so that its tokens are the tokens of the part before plus
/// those of the part after: the last space that follows a character other than whitespace, or
/// the last newline that follows an ASCII letter or digit (0 when there is none). No o200k
/// pre-token runs from such a character into the space or newline after it (words, numbers and
/// punctuation end before a space; only punctuation takes a newline with it), so one starts
/// there, and the pattern looks neither back nor ahead past it. A stream's heartbeats count the
/// part before once and only what follows again as more arrives (`hub::billing`), where they
/// counted everything delivered at every beat. Equal counts are tested below.
pub fn cut(text: &str) -> usize {
    let b = text.as_bytes();
    let mut i = b.len();
    while i > 1 {
        i -= 1;
        let at = match b[i] {
            b' ' => text[..i]
                .chars()
                .next_back()
                .is_some_and(|c| !c.is_whitespace()),
            b'\n' => b[i - 1].is_ascii_alphanumeric(),
            _ => false,
        };
        if at {
            return i;
        }
    }
    0
}

/// Estimated prompt tokens of a chat request: message texts plus OpenAI's per-message overhead
/// (3 tokens a message, 3 for the reply priming), tool names/schemas and ~85 per image.
pub fn estimate_prompt(req: &ChatRequest) -> u64 {
    let mut total = 3u64;
    for m in &req.messages {
        total += 3;
        for part in &m.content {
            match part {
                ContentPart::Text { text } => total += count(text),
                ContentPart::Image { .. } => total += 85,
            }
        }
        for call in &m.tool_calls {
            total += count(&call.name) + count(&call.arguments);
        }
    }
    for tool in &req.tools {
        total += count(&tool.name) + count(&tool.parameters.to_string());
        if let Some(d) = &tool.description {
            total += count(d);
        }
    }
    total
}

/// A cheap upper bound of prompt tokens without running the tokenizer (bytes / 2, at least one a
/// message); for reservations on the hot path.
pub fn prompt_upper_bound(req: &ChatRequest) -> u64 {
    let mut bytes = 0usize;
    for m in &req.messages {
        bytes += 16;
        for part in &m.content {
            match part {
                ContentPart::Text { text } => bytes += text.len(),
                ContentPart::Image { .. } => bytes += 2 * 1600,
            }
        }
        for call in &m.tool_calls {
            bytes += call.name.len() + call.arguments.len();
        }
    }
    for t in &req.tools {
        bytes += t.name.len()
            + t.parameters.to_string().len()
            + t.description.as_ref().map_or(0, String::len);
    }
    (bytes as u64).div_ceil(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Message, Role};
    use proptest::prelude::*;

    /// A text streamed in pieces and counted as `cut` allows (the part before the last cut
    /// once, the rest again at each step) has the tokens of the whole.
    #[test]
    fn counting_up_to_a_cut_and_after_it_counts_the_whole() {
        let texts = [
            "Hello world, this is a test. Numbers 12345 and 3.14159 here!",
            "don't  stop   me now\n\nI'm having  such a good time\r\n  ok",
            "mixed 中文 text with 日本語 and emoji 🎉🎉 plus   spaces\t\tand\ttabs",
            "code: fn main() { let x = 42; }\nprintln!(\"{x}\");\n// end\n",
            "\u{a0}nbsp\u{a0} words\u{2003} em-space  \u{3000}ideographic space done",
            "trailing spaces   ",
            "   leading spaces and punctuation... !!! ??? ,,, done.\n\n\nend",
            "ÀÉÎÕÜ àéîõü ÇĞŞ çğş, Ελληνικά κείμενα, русский текст 123abc456 a1b2c3",
            "URLs like https://example.com/a/b?c=d&e=f and paths /usr/bin/env\n",
            "combining e\u{301}\u{301} marks !\u{301}\nand more\u{301} ok\u{301}\n1\n",
        ];
        for t in texts {
            let whole = count(t);
            // Every prefix is a moment of the stream.
            let mut counted = (0usize, 0u64);
            for end in (0..=t.len()).filter(|&e| t.is_char_boundary(e)) {
                let seen = &t[..end];
                let from = counted.0;
                let at = from + cut(&seen[from..]);
                let before = counted.1 + count(&seen[from..at]);
                assert_eq!(
                    before + count(&seen[at..]),
                    count(seen),
                    "{seen:?} cut at {at}"
                );
                counted = (at, before);
            }
            assert_eq!(counted.1 + count(&t[counted.0..]), whole, "{t:?}");
        }
    }

    proptest! {
        #[test]
        fn any_cut_splits_the_count(t in "[ a-zA-Z0-9.,!?'\n\t\u{a0}\u{4e2d}\u{301}-]{0,80}") {
            let at = cut(&t);
            prop_assert!(t.is_char_boundary(at));
            prop_assert_eq!(count(&t[..at]) + count(&t[at..]), count(&t));
        }
    }

    #[test]
    fn counts_real_tokens() {
        assert_eq!(count(""), 0);
        assert_eq!(count("hello world"), 2);
        let req = ChatRequest {
            model: "m".into(),
            messages: vec![Message::text(Role::User, "hello world")],
            ..ChatRequest::default()
        };
        let est = estimate_prompt(&req);
        assert_eq!(est, 3 + 3 + 2);
        assert!(prompt_upper_bound(&req) >= est);
    }

    /// tiktoken-rs's own count, the reference.
    fn reference(text: &str) -> u64 {
        tiktoken_rs::o200k_base_singleton()
            .encode_ordinary(text)
            .len() as u64
    }

    #[test]
    #[expect(clippy::expect_used, reason = "tests")]
    fn the_vocabulary_is_o200k_bases_mergeable_tokens() {
        let v = vocabulary().expect("loads");
        assert_eq!(v.ends.len(), 199_998);
        let bpe = tiktoken_rs::o200k_base_singleton();
        for word in ["hello", " world", "\n\n", " the"] {
            assert_eq!(
                bpe.encode_ordinary(word),
                [v.rank(word.as_bytes())],
                "{word:?}"
            );
        }
        assert_eq!(v.token(v.rank(b" the")), b" the");
        assert_eq!(
            v.rank(b"<|endoftext|>"),
            NONE,
            "special tokens are not merged into"
        );
    }

    #[test]
    fn counts_equal_tiktoken_rs_on_documents_and_many_scripts() {
        let docs = [
            include_str!("../../../ARCHITECTURE.md"),
            include_str!("../../../BENCHMARKS.md"),
            include_str!("hub/mod.rs"),
            include_str!("../../hub-server/src/openai/codec.rs"),
        ];
        let samples = [
            "你好，世界！这是一个测试。Tokenizers split 汉字 differently.",
            "日本語のテキストとカタカナ、ひらがな。",
            "Привет, мир! Ελληνικά και العربية והעברית",
            "emoji 👍🏽 family 👨‍👩‍👧‍👦 flags 🇩🇪🇯🇵",
            "numbers 1234567890 3.14159 1e-9 0xDEADBEEF 2026-11-28T21:00:00Z",
            "I'm you're we've they'll he'd IT'S DON'T",
            "tabs\tand\r\nCRLF\n\n\n   trailing spaces   \n",
            "{\"key\": [1, 2, {\"nested\": null}], \"url\": \"https://example.com/a?b=c&d=e\"}",
            "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
            "e\u{301}te\u{301} combining marks, ZWJ\u{200d}and NBSP\u{a0}here",
        ];
        for text in docs.iter().chain(samples.iter()) {
            assert_eq!(
                count(text),
                reference(text),
                "{}",
                &text[..text.len().min(60)]
            );
            for line in text.lines() {
                assert_eq!(count(line), reference(line), "{line}");
            }
        }
    }

    #[test]
    fn long_pieces_up_to_the_chunk_size_count_exactly() {
        for text in [
            "a".repeat(MAX_PIECE),
            "ab".repeat(MAX_PIECE / 2),
            "!?".repeat(MAX_PIECE / 2),
            " ".repeat(MAX_PIECE - 1) + "x",
            "z".repeat(150),
            "xy".repeat(32),
            "xyz".repeat(22),
            "9".repeat(5000),
        ] {
            assert_eq!(count(&text), reference(&text), "{}", text.len());
        }
        // Longer pieces are counted a chunk at a time: off by at most a token per chunk.
        let long = "q".repeat(10 * MAX_PIECE + 7);
        assert!(count(&long).abs_diff(reference(&long)) <= 11);
    }

    proptest! {
        #[test]
        fn counts_equal_tiktoken_rs_on_random_text(
            text in "([a-zA-Z]{1,12}|[0-9]{1,7}|[ \\t\\n\\r]{1,4}|[.,;:!?'\"(){}<>/\\\\-]{1,3}|[\u{4e00}-\u{4e50}]{1,3}|[\u{0400}-\u{0450}]{1,5}|[\u{1F300}-\u{1F320}]|'(s|t|re|ve|m|ll|d)){0,40}"
        ) {
            prop_assert_eq!(count(&text), reference(&text));
        }

        /// Whitespace runs of every kind and length before and after words, digits and marks:
        /// where the pattern's look-ahead decides (the run's last character starts the next
        /// piece, or the run ends the text).
        #[test]
        fn whitespace_runs_split_as_tiktoken_splits_them(
            text in "([ \t\n\r\u{0b}\u{0c}\u{85}\u{a0}\u{2003}\u{2028}\u{3000}]{1,7}|[a-zA-Z]{1,5}|[0-9]{1,4}|[-.!?/]{1,2}|\u{301}|[\u{4e00}-\u{4e10}]){0,30}"
        ) {
            prop_assert_eq!(count(&text), reference(&text));
        }
    }

    #[test]
    fn a_pattern_without_o200ks_look_ahead_is_refused() {
        assert!(pre_tokenizer(PATTERN).is_some());
        assert!(pre_tokenizer(r"\p{L}+|\s+").is_none());
    }
}
