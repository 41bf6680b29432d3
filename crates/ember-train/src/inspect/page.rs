//! The self-contained HTML page: quantized activations, colours, and the template.

use serde_json::{Value, json};

/// Activations are stored as integers `0..=LEVELS`: one base64 digit each, so a page holds one
/// byte per value (64 levels, steps of 1/32 of the range).
pub const LEVELS: u8 = 63;

/// The base64 alphabet, digit `q` standing for level `q`.
const DIGITS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// The colour of +1 (red); 0 is white and -1 is [`NEGATIVE`].
pub const POSITIVE: [u8; 3] = [214, 39, 40];
/// The colour of -1 (blue).
pub const NEGATIVE: [u8; 3] = [31, 119, 180];
/// The colour of a loss of [`LOSS_SCALE`] nats or more (purple); 0 is white.
pub const LOSS: [u8; 3] = [106, 81, 163];
/// The loss, in nats, at which the loss view's colour saturates (a probability of 0.7%).
pub const LOSS_SCALE: f64 = 5.0;

const TEMPLATE: &str = include_str!("page.html");

/// The level of `value / scale`, clamped to `[-1, 1]` and mapped onto `0..=LEVELS`.
pub fn quantize(value: f32, scale: f32) -> u8 {
    let x = (value / scale).clamp(-1.0, 1.0);
    ((x + 1.0) / 2.0 * LEVELS as f32).round() as u8
}

/// The value in `[-1, 1]` a level stands for (what the page colours by).
pub fn dequantize(level: u8) -> f32 {
    level as f32 / LEVELS as f32 * 2.0 - 1.0
}

/// Unit-major values as one base64 digit per value.
pub fn encode_levels(values: &[f32], scales: &[f32], len: usize) -> String {
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| DIGITS[quantize(v, scales[i / len]) as usize] as char)
        .collect()
}

/// The background the page gives an activation `a` in `[-1, 1]` (clamped): white at 0, blending
/// linearly into [`POSITIVE`] at +1 and [`NEGATIVE`] at -1. The page's script computes the same.
pub fn activation_colour(a: f64) -> [u8; 3] {
    let a = a.clamp(-1.0, 1.0);
    if a >= 0.0 {
        mix(POSITIVE, a)
    } else {
        mix(NEGATIVE, -a)
    }
}

/// The background the page's loss view gives a loss in nats: white at 0, blending linearly into
/// [`LOSS`] at [`LOSS_SCALE`] and beyond. The page's script computes the same.
pub fn loss_colour(loss: f64) -> [u8; 3] {
    mix(LOSS, (loss / LOSS_SCALE).clamp(0.0, 1.0))
}

fn mix(end: [u8; 3], x: f64) -> [u8; 3] {
    end.map(|e| (255.0 + (e as f64 - 255.0) * x).round() as u8)
}

/// `text` with `&`, `<`, `>` and `"` written as HTML entities.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// The page: the template with `title` and `data` filled in.
///
/// The data sits in a `<script type="application/json">` element; every `<` of its JSON is
/// written `\u003c`, which JSON reads as the same character, so no text (`</script>`, `<!--`)
/// can end the element early.
pub fn render(title: &str, data: &Value) -> String {
    let json = data.to_string().replace('<', "\\u003c");
    TEMPLATE
        .replacen("{{TITLE}}", &escape_html(title), 1)
        .replacen("{{DATA}}", &json, 1)
}

/// The colours and scales the page's script reads.
pub fn palette() -> Value {
    json!({
        "levels": LEVELS,
        "colours": { "positive": POSITIVE, "negative": NEGATIVE, "loss": LOSS },
        "loss_scale": LOSS_SCALE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Levels: -1 is 0, +1 is 63, 0 rounds 31.5 up to 32; a value twice the scale clamps to 63.
    /// Every value comes back within half a step (1/63) of itself.
    #[test]
    fn quantization_round_trips_within_half_a_step() {
        assert_eq!(
            (quantize(-1.0, 1.0), quantize(1.0, 1.0), quantize(0.0, 1.0)),
            (0, 63, 32)
        );
        assert_eq!(quantize(6.0, 3.0), 63);
        for i in 0..=200 {
            let v = -1.0 + i as f32 / 100.0;
            assert!(
                (dequantize(quantize(v, 1.0)) - v).abs() <= 1.0 / 63.0 + 1e-6,
                "{v}"
            );
        }
        let encoded = encode_levels(&[-1.0, 1.0, -2.0, 2.0], &[1.0, 2.0], 2);
        assert_eq!(encoded, "A/A/");
    }

    /// White at 0, the end colours at ±1, half way at ±0.5 (255 + (214 - 255) / 2 = 234.5,
    /// rounded away from zero to 235).
    #[test]
    fn colours_blend_from_white() {
        assert_eq!(activation_colour(0.0), [255, 255, 255]);
        assert_eq!(activation_colour(1.0), POSITIVE);
        assert_eq!(activation_colour(-3.0), NEGATIVE);
        assert_eq!(activation_colour(0.5), [235, 147, 148]);
        // Loss: 0 is white, 2.5 nats half way to LOSS (255 + (106 - 255) / 2 = 180.5 -> 181).
        assert_eq!(loss_colour(0.0), [255, 255, 255]);
        assert_eq!(loss_colour(2.5), [181, 168, 209]);
        assert_eq!(loss_colour(9.0), LOSS);
    }

    /// Text that would close the data element or start markup stays inside the JSON string.
    #[test]
    fn data_cannot_escape_its_script_element() {
        let data = json!({ "text": "</script><b>&\"é" });
        let page = render("a <title> & \"more\"", &data);
        assert!(page.contains("<title>a &lt;title&gt; &amp; &quot;more&quot;</title>"));
        assert_eq!(
            page.matches("</script>").count(),
            2,
            "only the template's own"
        );
        let start = page.find("type=\"application/json\">").unwrap() + 24;
        let end = start + page[start..].find("</script>").unwrap();
        let back: Value = serde_json::from_str(&page[start..end]).unwrap();
        assert_eq!(back, data);
    }
}
