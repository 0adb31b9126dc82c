//! Stop strings over streamed text.
//!
//! Generated text is held back while its end could be the start of a stop
//! string, so a stop string never reaches the output, even across tokens.

/// Streams text, cutting it at the first stop string.
#[derive(Debug, Default)]
pub struct StopBuffer {
    stops: Vec<String>,
    pending: String,
}

impl StopBuffer {
    /// A buffer for these stop strings (empty ones are ignored).
    pub fn new(stops: &[String]) -> StopBuffer {
        StopBuffer {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Adds `text`; returns what can be emitted now, and whether a stop
    /// string was found (then generation should end; the rest is dropped).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // keep the longest suffix that is a prefix of some stop string
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if i > keep && self.pending.ends_with(&s[..i]) {
                    keep = i;
                }
            }
        }
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// What is still held back (emit it when generation ends otherwise).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_string_across_pieces_is_cut() {
        let mut b = StopBuffer::new(&["\nUser:".into()]);
        assert_eq!(b.push("Hello"), ("Hello".into(), false));
        assert_eq!(b.push(" there\nUs"), (" there".into(), false));
        assert_eq!(b.push("er: hi"), ("".into(), true));
    }

    #[test]
    fn false_start_is_released() {
        let mut b = StopBuffer::new(&["END".into()]);
        assert_eq!(b.push("bE"), ("b".into(), false));
        assert_eq!(b.push("x"), ("Ex".into(), false));
        assert_eq!(b.push("EN"), ("".into(), false));
        assert_eq!(b.finish(), "EN");
    }

    #[test]
    fn no_stops_passes_through() {
        let mut b = StopBuffer::new(&[]);
        assert_eq!(b.push("abc"), ("abc".into(), false));
    }
}
