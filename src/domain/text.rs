//! Unicode rules for the text the service stores and compares.
//!
//! One string can be written many ways: `É` precomposed (NFC) or as `E` plus a combining accent
//! (NFD), `ＣＳ1` in full-width letters beside `CS1`, `ß` beside `SS`. Stored as sent, each way
//! would be a different course code or e-mail address that looks the same on every screen. So:
//! - names and titles, shown as written, are stored in NFC (one spelling per visible string);
//! - identifiers (course codes, e-mail addresses) are compared as identifier comparisons
//!   usually do (UTS #39, RFC 8265): compatibility-normalised (NFKC) and case-folded. Codes keep
//!   the API's upper case, e-mails the lower case;
//! - search folds the query and the title the same way, so `strasse` finds "Straße", `οδοσ`
//!   finds "ΟΔΟΣ" and an NFD query finds an NFC title.
//!
//! Case changes can lengthen a string (`ß` -> `SS`, `ﬃ` -> `FFI`, `İ` -> `i̇`), so every length
//! rule is checked on the stored form, never on what the client sent.
//!
//! Folding is per character, lower case of upper case: that maps `ß` to `ss` and final `ς` to
//! `σ` as Unicode's full case folding does (str::to_lowercase would keep `ß` and turn a final
//! `Σ` into `ς`). One pass is not always stable: `ẞ` (U+1E9E) is its own upper case and
//! lower-cases to `ß`, which the next pass turns into `ss`. A stored form that folds to
//! something else would let `STRAẞE@X.ORG` and `strasse@x.org` be two addresses, and refuse a
//! client that sends back what it read, so the fold repeats until nothing changes, and a code is
//! the upper case of the fold: two codes are one exactly when their folds are, and folding or
//! coding a stored form gives it back.

use unicode_normalization::UnicodeNormalization;

/// Names and titles: canonical composition, nothing else changed.
pub(super) fn display(text: &str) -> String {
    text.nfc().collect()
}

/// Course codes: the fold upper-cased, NFKC again (upper-casing can leave a sequence that
/// normalisation composes differently).
pub(super) fn code(text: &str) -> String {
    let upper: String = fold(text).chars().flat_map(char::to_uppercase).collect();
    upper.nfkc().collect()
}

/// The most passes `fold` makes. Every character and every pair of cased, compatibility or
/// combining characters is stable after one pass, or two when it holds `ẞ` (checked over all
/// of them); the bound only keeps a future Unicode table from looping.
const MAX_FOLD_PASSES: usize = 4;

/// E-mail addresses and search: NFKC, case-folded, NFKC again, until that changes nothing.
pub(super) fn fold(text: &str) -> String {
    let mut folded = fold_once(text);
    for _ in 1..MAX_FOLD_PASSES {
        let again = fold_once(&folded);
        if again == folded {
            break;
        }
        folded = again;
    }
    folded
}

fn fold_once(text: &str) -> String {
    let folded: String = text
        .nfkc()
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .collect();
    folded.nfkc().collect()
}

/// Whether the text shows anything: one character that is not white space, a control character
/// or a default-ignorable code point (zero-width space, the Hangul fillers, joiners, variation
/// selectors, ...), which every font renders as nothing.
pub(super) fn is_visible(text: &str) -> bool {
    text.chars().any(|c| !is_invisible(c))
}

/// White space, control, or Default_Ignorable_Code_Point (Unicode's DerivedCoreProperties).
pub(super) fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'..='\u{1160}'
                | '\u{17B4}'..='\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFF8}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn look_alike_spellings_become_one() {
        assert_eq!(code("CAF\u{c9}"), code("CAFE\u{301}"));
        assert_eq!(code("ＣＳ1"), "CS1");
        assert_eq!(code("ß"), code("ss"));
        assert_eq!(fold("jos\u{e9}@x.io"), fold("JOSE\u{301}@X.IO"));
        assert_eq!(display("Jose\u{301}"), "Jos\u{e9}");
    }

    #[test]
    fn folding_finds_what_lower_casing_misses() {
        assert_eq!(fold("Straße"), "strasse");
        assert_eq!(fold("ΟΔΟΣ"), fold("οδοσ"));
        assert_eq!(fold("ΟΔΟΣ"), fold("οδος"));
    }

    #[test]
    fn capital_sharp_s_is_the_small_one_and_ss() {
        assert_eq!(fold("STRA\u{1E9E}E@X.ORG"), "strasse@x.org");
        assert_eq!(code("STRA\u{1E9E}E"), "STRASSE");
        assert_eq!(code("stra\u{1E9E}e"), code("STRASSE"));
    }

    #[test]
    fn case_changes_can_lengthen_text() {
        assert_eq!(code(&"ß".repeat(17)).chars().count(), 34);
        assert_eq!(code(&"ﬃ".repeat(11)).chars().count(), 33);
        assert_eq!(fold(&"İ".repeat(32)).len(), 96);
    }

    #[test]
    fn invisible_only_text_is_not_visible() {
        for text in ["\u{200B}", "\u{3164}", "\u{3164}\u{200D} \u{FEFF}", " "] {
            assert!(!is_visible(text), "{text:?} counted as visible");
        }
        assert!(is_visible("\u{200B}A"));
    }
}
