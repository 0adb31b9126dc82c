//! Helpers shared by the integration tests.
#![allow(dead_code)]

use template::{render_chat, ChatTemplate, Message, Rendered, Request};

/// Renders and returns the text, panicking with the error.
pub fn text(t: &ChatTemplate, req: &Request) -> String {
    match render_chat(t, req) {
        Ok(r) => r.text(),
        Err(e) => panic!("render failed: {e}"),
    }
}

/// The untrusted segments' texts.
pub fn untrusted(r: &Rendered) -> Vec<&str> {
    r.segments
        .iter()
        .filter(|s| !s.trusted)
        .map(|s| s.text.as_str())
        .collect()
}

/// A request with these messages and defaults otherwise.
pub fn req(msgs: &[(&str, &str)]) -> Request {
    Request {
        messages: msgs.iter().map(|(r, c)| Message::new(r, c)).collect(),
        ..Request::default()
    }
}

/// Asserts equality, printing both sides between rules on failure.
#[track_caller]
pub fn eq(got: &str, want: &str) {
    if got != want {
        panic!(
            "\n--- expected ---\n{want}\n--- got ---\n{got}\n--- (debug) ---\nexpected {want:?}\ngot      {got:?}\n"
        );
    }
}
