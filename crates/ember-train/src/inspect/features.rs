//! Features of a text, one value per character, and how well each hidden unit tracks them.
//!
//! A feature's value at position `t` describes the text up to and including character `t`:
//! exactly what a unit's activation after reading that character can know.

use std::ops::Range;

/// One feature of the text, with its value after every character.
#[derive(Debug, Clone, PartialEq)]
pub struct TextFeature {
    /// A short name, as the page lists it (`inside double quotes`).
    pub name: &'static str,
    /// What the value is, in one sentence.
    pub description: &'static str,
    /// The value after reading each character of the text.
    pub values: Vec<f64>,
}

impl TextFeature {
    /// Whether the feature takes more than one value on this text (a constant one tracks
    /// nothing, so no unit is ranked against it).
    pub fn varies(&self) -> bool {
        self.values.windows(2).any(|w| w[0] != w[1])
    }
}

/// How strongly one unit's activation follows one feature over the text.
#[derive(Debug, Clone, PartialEq)]
pub struct Correlation {
    /// The index of the feature in [`text_features`]'s list.
    pub feature: usize,
    /// The index of the state trace (a layer's hidden or cell state).
    pub trace: usize,
    /// The unit within that state.
    pub unit: usize,
    /// Pearson's correlation coefficient over every position of the text.
    pub r: f64,
}

fn flag(value: bool) -> f64 {
    if value { 1.0 } else { 0.0 }
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '\''
}

/// The features Ember computes for `text` (every one, whether it varies on this text or not).
pub fn text_features(text: &[char]) -> Vec<TextFeature> {
    let n = text.len();
    let mut in_quotes = Vec::with_capacity(n);
    let mut in_parens = Vec::with_capacity(n);
    let mut bracket_depth = Vec::with_capacity(n);
    let mut line_position = Vec::with_capacity(n);
    let mut word_start = Vec::with_capacity(n);
    let mut word_position = Vec::with_capacity(n);
    let mut capitals_line = Vec::with_capacity(n);
    let (mut quoted, mut parens, mut depth, mut column, mut in_word) = (false, 0u32, 0u32, 0, 0);
    // Whether the line so far has letters and every one of them is upper case.
    let (mut line_letters, mut line_upper) = (false, true);
    for (t, &c) in text.iter().enumerate() {
        match c {
            '"' => quoted = !quoted,
            '\u{201C}' => quoted = true,
            '\u{201D}' => quoted = false,
            _ => {}
        }
        match c {
            '(' => parens += 1,
            ')' => parens = parens.saturating_sub(1),
            _ => {}
        }
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if c == '\n' {
            column = 0;
            line_letters = false;
            line_upper = true;
        } else {
            column += 1;
            if c.is_alphabetic() {
                line_letters = true;
                line_upper &= c.is_uppercase();
            }
        }
        let starts = c.is_alphanumeric() && (t == 0 || !is_word_char(text[t - 1]));
        in_word = if is_word_char(c) && (starts || in_word > 0) {
            in_word + 1
        } else {
            0
        };
        in_quotes.push(flag(quoted));
        in_parens.push(flag(parens > 0));
        bracket_depth.push(depth as f64);
        line_position.push(column as f64);
        word_start.push(flag(starts));
        word_position.push(in_word as f64);
        capitals_line.push(flag(line_letters && line_upper));
    }
    let per_char = |test: fn(char) -> bool| text.iter().map(|&c| flag(test(c))).collect();
    vec![
        TextFeature {
            name: "inside double quotes",
            description: "1 between an opening and a closing double quote (\" or \u{201C} \u{201D}), the opening one included",
            values: in_quotes,
        },
        TextFeature {
            name: "inside parentheses",
            description: "1 between ( and its ), the ( included",
            values: in_parens,
        },
        TextFeature {
            name: "bracket depth",
            description: "how many (, [ and { are open",
            values: bracket_depth,
        },
        TextFeature {
            name: "position in line",
            description: "characters read since the last newline",
            values: line_position,
        },
        TextFeature {
            name: "start of word",
            description: "1 on a word's first letter or digit",
            values: word_start,
        },
        TextFeature {
            name: "position in word",
            description: "characters read since the word began; 0 between words",
            values: word_position,
        },
        TextFeature {
            name: "after a newline",
            description: "1 when the character just read is a newline",
            values: per_char(|c| c == '\n'),
        },
        TextFeature {
            name: "after a space",
            description: "1 when the character just read is a space",
            values: per_char(|c| c == ' '),
        },
        TextFeature {
            name: "upper-case letter",
            description: "1 when the character just read is an upper-case letter",
            values: per_char(char::is_uppercase),
        },
        TextFeature {
            name: "line in capitals",
            description: "1 while every letter of the line so far is upper case (a speaker's name in a play)",
            values: capitals_line,
        },
        TextFeature {
            name: "vowel",
            description: "1 when the character just read is a vowel (a, e, i, o, u, y)",
            values: per_char(|c| "aeiouyAEIOUY".contains(c)),
        },
        TextFeature {
            name: "end of sentence",
            description: "1 when the character just read is . ! or ?",
            values: per_char(|c| matches!(c, '.' | '!' | '?')),
        },
        TextFeature {
            name: "after a comma or colon",
            description: "1 when the character just read is , ; or :",
            values: per_char(|c| matches!(c, ',' | ';' | ':')),
        },
        TextFeature {
            name: "digit",
            description: "1 when the character just read is a digit",
            values: per_char(|c| c.is_ascii_digit()),
        },
    ]
}

/// Pearson's correlation coefficient of `x` and `y` (equal lengths); `None` where either is
/// constant, so that the coefficient is undefined.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    assert_eq!(x.len(), y.len(), "one value of each per position");
    let n = x.len() as f64;
    let (mean_x, mean_y) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut xy, mut xx, mut yy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (a, b) = (a - mean_x, b - mean_y);
        xy += a * b;
        xx += a * a;
        yy += b * b;
    }
    (xx > 0.0 && yy > 0.0).then(|| (xy / (xx * yy).sqrt()).clamp(-1.0, 1.0))
}

/// For every feature that varies, the `per_feature` units whose activation correlates with it
/// most strongly (either sign), all ranked together by `|r|`, strongest first.
///
/// `traces[k]` holds one state's activations unit-major: unit `u`'s value at every position is
/// `traces[k][u * len .. (u + 1) * len]`, `len` being the length of the features' values.
pub fn rank_correlations(
    features: &[TextFeature],
    traces: &[Vec<f32>],
    per_feature: usize,
) -> Vec<Correlation> {
    let mut ranked = Vec::new();
    for (f, feature) in features.iter().enumerate() {
        if !feature.varies() {
            continue;
        }
        let len = feature.values.len();
        let mut best: Vec<Correlation> = Vec::new();
        for (k, trace) in traces.iter().enumerate() {
            for (unit, range) in unit_ranges(trace.len(), len).enumerate() {
                let activations: Vec<f64> = trace[range].iter().map(|&v| v as f64).collect();
                if let Some(r) = pearson(&feature.values, &activations) {
                    best.push(Correlation {
                        feature: f,
                        trace: k,
                        unit,
                        r,
                    });
                }
            }
        }
        best.sort_by(|a, b| b.r.abs().total_cmp(&a.r.abs()));
        ranked.extend(best.into_iter().take(per_feature));
    }
    ranked.sort_by(|a, b| b.r.abs().total_cmp(&a.r.abs()));
    ranked
}

/// The ranges of each unit's values in a unit-major trace of `total` values, `len` per unit.
fn unit_ranges(total: usize, len: usize) -> impl Iterator<Item = Range<usize>> {
    (0..total.checked_div(len).unwrap_or(0)).map(move |u| u * len..(u + 1) * len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feature<'a>(features: &'a [TextFeature], name: &str) -> &'a [f64] {
        &features.iter().find(|f| f.name == name).unwrap().values
    }

    /// Each feature's values on a short text, worked out by hand character by character.
    #[test]
    fn features_follow_the_text() {
        let text: Vec<char> = "He said \"hi (x)\".\nOK: [a(b)]".chars().collect();
        let features = text_features(&text);
        let ones = |name| {
            feature(&features, name)
                .iter()
                .enumerate()
                .filter(|(_, v)| **v == 1.0)
                .map(|(t, _)| t)
                .collect::<Vec<_>>()
        };
        // `"` at 8 opens and 15 closes: 8..=14 inside.
        assert_eq!(ones("inside double quotes"), (8..15).collect::<Vec<_>>());
        // `(` at 12, `)` at 14; `(` at 24, `)` at 26.
        assert_eq!(ones("inside parentheses"), vec![12, 13, 24, 25]);
        // Words: He(0) said(3) hi(9) x(13) OK(18) a(23) b(25).
        assert_eq!(ones("start of word"), vec![0, 3, 9, 13, 18, 23, 25]);
        assert_eq!(ones("after a newline"), vec![17]);
        // "H" alone is a line in capitals until "e"; then "OK: [" until "a".
        assert_eq!(ones("line in capitals"), vec![0, 18, 19, 20, 21, 22]);
        let depth = feature(&features, "bracket depth");
        assert_eq!(&depth[21..], &[0.0, 1.0, 1.0, 2.0, 2.0, 1.0, 0.0]);
        let column = feature(&features, "position in line");
        assert_eq!(
            (column[0], column[16], column[17], column[18]),
            (1.0, 17.0, 0.0, 1.0)
        );
        let in_word = feature(&features, "position in word");
        assert_eq!(&in_word[3..8], &[1.0, 2.0, 3.0, 4.0, 0.0]);
        assert!(
            !TextFeature {
                name: "",
                description: "",
                values: vec![2.0; 4]
            }
            .varies()
        );
    }

    /// Pearson's r of hand-worked series: x = [1, 2, 3, 4] against y = 2x + 1 is 1, against
    /// -x is -1, against [1, 0, 0, 1] is 0 (centered x = [-1.5, -0.5, 0.5, 1.5], centered y =
    /// [0.5, -0.5, -0.5, 0.5], products sum to 0); a constant series has none.
    #[test]
    fn pearson_matches_hand_computed_values() {
        let x = [1.0, 2.0, 3.0, 4.0];
        assert!((pearson(&x, &[3.0, 5.0, 7.0, 9.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((pearson(&x, &[-1.0, -2.0, -3.0, -4.0]).unwrap() + 1.0).abs() < 1e-12);
        assert!(pearson(&x, &[1.0, 0.0, 0.0, 1.0]).unwrap().abs() < 1e-12);
        assert_eq!(pearson(&x, &[5.0; 4]), None);
    }

    /// A unit that copies a feature ranks first with r = 1, its negation counts as strongly
    /// (r = -1), a constant feature ranks nothing, and at most `per_feature` units per feature.
    #[test]
    fn ranking_puts_the_tracking_unit_first() {
        let text: Vec<char> = "ab (cd) ef\n(g) h\n".chars().collect();
        let features = text_features(&text);
        let len = text.len();
        let parens = feature(&features, "inside parentheses");
        let noise: Vec<f32> = (0..len).map(|t| ((t * 7) % 5) as f32 / 5.0).collect();
        let copy: Vec<f32> = parens.iter().map(|&v| v as f32 * 0.5 - 0.2).collect();
        let negated: Vec<f32> = parens.iter().map(|&v| -(v as f32)).collect();
        let trace = [noise.clone(), copy, noise, negated].concat();
        let ranked = rank_correlations(&features, &[trace], 2);
        let parens_index = features
            .iter()
            .position(|f| f.name == "inside parentheses")
            .unwrap();
        let top: Vec<_> = ranked
            .iter()
            .filter(|c| c.feature == parens_index)
            .collect();
        assert_eq!(top.len(), 2);
        assert!((top[0].r.abs() - 1.0).abs() < 1e-9 && (top[1].r.abs() - 1.0).abs() < 1e-9);
        let mut units = [top[0].unit, top[1].unit];
        units.sort();
        assert_eq!(units, [1, 3]);
        let quotes = features
            .iter()
            .position(|f| f.name == "inside double quotes")
            .unwrap();
        assert!(ranked.iter().all(|c| c.feature != quotes));
        assert!(ranked.windows(2).all(|w| w[0].r.abs() >= w[1].r.abs()));
    }
}
