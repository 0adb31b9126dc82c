//! Splits a thinking model's output into its reasoning and its answer, as
//! it streams: the text between the template's thinking tags (`<think>`,
//! `</think>`; `template::ThinkTags`) is thinking, the rest content.
//! Ollama's `thinking.Parser`: the opening tag counts only at the start
//! (after whitespace); whitespace right after either tag is dropped; a tag
//! split across pieces is held back until it is whole.

use template::ThinkTags;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace yet: the opening tag may still come.
    LookingForOpening,
    /// After the opening tag, eating whitespace.
    ThinkingStarted,
    /// Inside the reasoning.
    Thinking,
    /// After the closing tag, eating whitespace.
    ThinkingDone,
    /// In the answer: everything passes through.
    Done,
}

/// A streaming splitter of thinking and content ([`ThinkSplitter::add`]).
#[derive(Clone, Debug)]
pub struct ThinkSplitter {
    tags: ThinkTags,
    state: State,
    acc: String,
}

impl ThinkSplitter {
    /// A splitter for a model whose reasoning sits between `tags`.
    pub fn new(tags: ThinkTags) -> ThinkSplitter {
        ThinkSplitter {
            tags,
            state: State::LookingForOpening,
            acc: String::new(),
        }
    }

    /// Told the end of the prompt, before any output: when it ends with
    /// the opening tag (the template opened the reasoning), the output
    /// starts inside it, as Ollama does.
    pub fn prompt_end(&mut self, end: &str) {
        if self.state == State::LookingForOpening
            && self.acc.is_empty()
            && end.trim_end().ends_with(self.tags.open.as_str())
        {
            let open = self.tags.open.clone();
            self.add(&open);
        }
    }

    /// Feeds the next piece of output; the `(thinking, content)` that can
    /// be released now (text that may be part of a tag is kept).
    pub fn add(&mut self, piece: &str) -> (String, String) {
        self.acc.push_str(piece);
        let (mut thinking, mut content) = (String::new(), String::new());
        loop {
            let (t, c, more) = self.eat();
            thinking.push_str(&t);
            content.push_str(&c);
            if !more {
                return (thinking, content);
            }
        }
    }

    /// What is held back at the end of the output: a partial tag is text
    /// of the part it was found in.
    pub fn finish(&mut self) -> (String, String) {
        let rest = std::mem::take(&mut self.acc);
        match self.state {
            State::Thinking | State::ThinkingStarted => (rest, String::new()),
            // a lone partial opening tag, or whitespace, is content
            _ => (String::new(), rest),
        }
    }

    /// One step of the state machine; `true` when it should go on.
    fn eat(&mut self) -> (String, String, bool) {
        let none = String::new;
        let (open, close) = (&self.tags.open, &self.tags.close);
        match self.state {
            State::LookingForOpening => {
                let trimmed = self.acc.trim_start();
                if let Some(after) = trimmed.strip_prefix(open.as_str()) {
                    let after = after.trim_start().to_string();
                    self.state = if after.is_empty() {
                        State::ThinkingStarted
                    } else {
                        State::Thinking
                    };
                    self.acc = after;
                    (none(), none(), true)
                } else if trimmed.is_empty() || open.starts_with(trimmed) {
                    (none(), none(), false)
                } else {
                    // no opening tag: the model skipped thinking
                    self.state = State::Done;
                    (none(), std::mem::take(&mut self.acc), false)
                }
            }
            State::ThinkingStarted => {
                let trimmed = self.acc.trim_start().to_string();
                self.acc.clear();
                if trimmed.is_empty() {
                    return (none(), none(), false);
                }
                self.state = State::Thinking;
                self.acc = trimmed;
                (none(), none(), true)
            }
            State::Thinking => {
                if let Some(at) = self.acc.find(close.as_str()) {
                    let thinking = self.acc[..at].to_string();
                    let rest = self.acc[at + close.len()..].trim_start().to_string();
                    self.acc.clear();
                    self.state = if rest.is_empty() {
                        State::ThinkingDone
                    } else {
                        State::Done
                    };
                    return (thinking, rest, false);
                }
                let keep = overlap(&self.acc, close);
                let thinking = self.acc[..self.acc.len() - keep].to_string();
                self.acc.drain(..self.acc.len() - keep);
                (thinking, none(), false)
            }
            State::ThinkingDone => {
                let trimmed = self.acc.trim_start().to_string();
                self.acc.clear();
                if !trimmed.is_empty() {
                    self.state = State::Done;
                }
                (none(), trimmed, false)
            }
            State::Done => (none(), std::mem::take(&mut self.acc), false),
        }
    }
}

/// The longest suffix of `s` that is a prefix of `tag` (in bytes, at a
/// character boundary).
pub(crate) fn overlap(s: &str, tag: &str) -> usize {
    (1..=tag.len().min(s.len()))
        .rev()
        .find(|&i| {
            s.is_char_boundary(s.len() - i) && tag.is_char_boundary(i) && s.ends_with(&tag[..i])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags() -> ThinkTags {
        ThinkTags {
            open: "<think>".into(),
            close: "</think>".into(),
        }
    }

    /// Feeds `pieces` one by one; all thinking and content, and finish's.
    fn split(mut s: ThinkSplitter, pieces: &[&str]) -> (String, String) {
        let (mut t, mut c) = (String::new(), String::new());
        for p in pieces {
            let (a, b) = s.add(p);
            t += &a;
            c += &b;
        }
        let (a, b) = s.finish();
        (t + &a, c + &b)
    }

    fn own(t: &str, c: &str) -> (String, String) {
        (t.into(), c.into())
    }

    #[test]
    fn thinking_then_content() {
        let s = ThinkSplitter::new(tags());
        assert_eq!(
            split(
                s,
                &["<think>", "Let me", " see.", "</think>", "\n\n", "It is 4."]
            ),
            own("Let me see.", "It is 4.")
        );
    }

    #[test]
    fn tags_split_across_pieces_are_held_back() {
        let mut s = ThinkSplitter::new(tags());
        assert_eq!(s.add("  <th"), own("", ""));
        assert_eq!(s.add("ink> hmm </th"), own("hmm ", ""));
        assert_eq!(s.add("ink>ok"), own("", "ok"));
        assert_eq!(
            s.add(" <think>"),
            own("", " <think>"),
            "later tags are text"
        );
        // every character, one at a time, gives the same split
        let text = "<think>a < b </thinker> c</think> done </think>";
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(
            split(ThinkSplitter::new(tags()), &pieces),
            own("a < b </thinker> c", "done </think>")
        );
    }

    #[test]
    fn no_opening_tag_is_all_content() {
        let s = ThinkSplitter::new(tags());
        assert_eq!(
            split(s, &["\nHello", " <think>x</think>"]),
            own("", "\nHello <think>x</think>")
        );
        // a partial tag at the end is content after all
        assert_eq!(
            split(ThinkSplitter::new(tags()), &["<thi"]),
            own("", "<thi")
        );
    }

    #[test]
    fn a_prompt_that_opened_the_reasoning() {
        let opened = || {
            let mut s = ThinkSplitter::new(tags());
            s.prompt_end("<|im_start|>assistant\n<think>\n");
            s
        };
        assert_eq!(
            split(opened(), &["why", "</think>", "because"]),
            own("why", "because")
        );
        // cut off while thinking: the held text is thinking
        assert_eq!(split(opened(), &["why </thi"]), own("why </thi", ""));
        // a prompt that did not open it changes nothing
        let mut s = ThinkSplitter::new(tags());
        s.prompt_end("<think>x</think>\n<|im_start|>assistant\n");
        assert_eq!(split(s, &["why", "</think>"]), own("", "why</think>"));
    }

    #[test]
    fn overlap_respects_characters() {
        assert_eq!(overlap("ab</th", "</think>"), 4);
        assert_eq!(overlap("abc", "</think>"), 0);
        assert_eq!(overlap("é", "é!"), 2);
    }
}
