//! The lexer for Go templates: text and actions, trim markers applied,
//! comments dropped, actions split into tokens.

use crate::{Error, ErrorKind, Result};

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    Word(String),
    Dot,
    Field(Vec<String>),
    Var(String, Vec<String>),
    Str(String),
    Int(i64),
    Float(f64),
    LParen,
    RParen,
    Pipe,
    Comma,
    Declare,
    Assign,
}

/// A token and whether whitespace came before it.
pub(super) type Spaced = (Tok, bool);

pub(super) enum Item {
    Text(String),
    Action(Vec<Spaced>, usize),
}

pub(super) fn syntax(line: usize, msg: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Syntax,
        format!("go template: line {line}: {msg}"),
    )
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Splits the source into text and actions, applying trim markers and
/// dropping comments.
pub(super) fn lex(src: &str) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    let mut pos = 0;
    let mut line = 1;
    let mut trim_next = false;
    while pos < src.len() {
        let Some(off) = src[pos..].find("{{") else {
            let mut text = &src[pos..];
            if trim_next {
                text = text.trim_start_matches(is_space);
            }
            items.push(Item::Text(text.to_string()));
            break;
        };
        let mut text = &src[pos..pos + off];
        line += text.matches('\n').count();
        if trim_next {
            text = text.trim_start_matches(is_space);
        }
        let mut p = pos + off + 2;
        let b = src.as_bytes();
        let trim_left =
            b.get(p) == Some(&b'-') && b.get(p + 1).is_some_and(|c| is_space(*c as char));
        if trim_left {
            text = text.trim_end_matches(is_space);
            p += 1;
        }
        items.push(Item::Text(text.to_string()));
        let start_line = line;
        // A comment: {{/* ... */}} or {{- /* ... */ -}}.
        let after = if trim_left {
            src[p..].trim_start_matches(is_space)
        } else {
            &src[p..]
        };
        if after.starts_with("/*") {
            let cstart = src.len() - after.len();
            let end = src[cstart..]
                .find("*/")
                .ok_or_else(|| syntax(start_line, "unclosed comment"))?;
            let mut q = cstart + end + 2;
            line += src[p..q].matches('\n').count();
            let rest = &src[q..];
            if let Some(r) = rest.strip_prefix(" -}}").or_else(|| {
                let t = rest.trim_start_matches(is_space);
                (t.len() < rest.len())
                    .then_some(t)
                    .and_then(|t| t.strip_prefix("-}}"))
            }) {
                q = src.len() - r.len();
                trim_next = true;
            } else if rest.starts_with("}}") {
                q += 2;
                trim_next = false;
            } else {
                return Err(syntax(line, "comment ends before closing delimiter"));
            }
            pos = q;
            continue;
        }
        let (toks, end, trim_right, nl) = lex_action(src, p, start_line)?;
        line += nl;
        items.push(Item::Action(toks, start_line));
        trim_next = trim_right;
        pos = end;
    }
    Ok(items)
}

/// Tokenizes one action starting at `p` (after `{{` and any `-`). Returns
/// the tokens, the position after `}}`, whether it ended with `-}}`, and the
/// newlines it held.
fn lex_action(src: &str, mut p: usize, line: usize) -> Result<(Vec<Spaced>, usize, bool, usize)> {
    let b = src.as_bytes();
    let mut toks = Vec::new();
    let mut nl = 0;
    let mut space = true;
    loop {
        let Some(&c) = b.get(p) else {
            return Err(syntax(line, "unclosed action"));
        };
        // The real character (not just its first byte) so that non-ASCII
        // text is judged as a whole and always consumed or refused.
        let c = src[p..].chars().next().unwrap_or(c as char);
        if is_space(c) {
            // Skip the whole run at once, then look for `-}}`.
            let run = src[p..].len() - src[p..].trim_start_matches(is_space).len();
            nl += src[p..p + run].matches('\n').count();
            p += run;
            if src[p..].starts_with("-}}") {
                return Ok((toks, p + 3, true, nl));
            }
            space = true;
            continue;
        }
        if src[p..].starts_with("}}") {
            return Ok((toks, p + 2, false, nl));
        }
        let start = p;
        let tok = match c {
            '(' => {
                p += 1;
                Tok::LParen
            }
            ')' => {
                p += 1;
                Tok::RParen
            }
            '|' => {
                p += 1;
                Tok::Pipe
            }
            ',' => {
                p += 1;
                Tok::Comma
            }
            ':' if b.get(p + 1) == Some(&b'=') => {
                p += 2;
                Tok::Declare
            }
            '=' => {
                p += 1;
                Tok::Assign
            }
            '"' => {
                let (s, q) = lex_string(src, p, line)?;
                p = q;
                Tok::Str(s)
            }
            '`' => {
                let end = src[p + 1..]
                    .find('`')
                    .ok_or_else(|| syntax(line, "unterminated raw string"))?;
                let s = src[p + 1..p + 1 + end].to_string();
                nl += s.matches('\n').count();
                p += end + 2;
                Tok::Str(s)
            }
            '\'' => {
                let rest = &src[p + 1..];
                let mut it = rest.char_indices();
                let (ch, len) = match it.next() {
                    Some((_, '\\')) => {
                        let (s, q) = lex_string(
                            &format!("\"{}", &rest[..rest.find('\'').unwrap_or(rest.len())]),
                            0,
                            line,
                        )
                        .map_err(|_| syntax(line, "bad character constant"))?;
                        let _ = q;
                        (
                            s.chars().next().unwrap_or('\0'),
                            rest.find('\'').unwrap_or(0),
                        )
                    }
                    Some((_, ch)) => (ch, ch.len_utf8()),
                    None => return Err(syntax(line, "unterminated character constant")),
                };
                if rest.as_bytes().get(len) != Some(&b'\'') {
                    return Err(syntax(line, "unterminated character constant"));
                }
                p += len + 2;
                Tok::Int(ch as i64)
            }
            '.' if !b.get(p + 1).is_some_and(|c| c.is_ascii_digit()) => {
                let (chain, q) = lex_chain(src, p);
                p = q;
                if chain.is_empty() {
                    Tok::Dot
                } else {
                    Tok::Field(chain)
                }
            }
            '$' => {
                let mut q = p + 1;
                while b
                    .get(q)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
                {
                    q += 1;
                }
                let name = src[p..q].to_string();
                let (chain, r) = lex_chain(src, q);
                p = r;
                Tok::Var(name, chain)
            }
            c if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' => {
                let mut q = p + 1;
                while b.get(q).is_some_and(|c| {
                    c.is_ascii_alphanumeric()
                        || *c == b'.'
                        || *c == b'_'
                        || ((*c == b'-' || *c == b'+') && matches!(b[q - 1], b'e' | b'E'))
                }) {
                    q += 1;
                }
                let s = src[p..q].replace('_', "");
                p = q;
                parse_number(&s).ok_or_else(|| syntax(line, format!("bad number syntax: {s:?}")))?
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut q = p;
                while let Some(ch) = src[q..].chars().next() {
                    if ch.is_alphanumeric() || ch == '_' {
                        q += ch.len_utf8();
                    } else {
                        break;
                    }
                }
                if q == p {
                    return Err(syntax(line, format!("unexpected {c:?} in action")));
                }
                let w = src[p..q].to_string();
                p = q;
                Tok::Word(w)
            }
            c => return Err(syntax(line, format!("unexpected {c:?} in action"))),
        };
        let _ = start;
        toks.push((tok, space));
        space = false;
    }
}

fn parse_number(s: &str) -> Option<Tok> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let int = if let Some(h) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        i64::from_str_radix(h, 16).ok()
    } else if let Some(o) = body.strip_prefix("0o") {
        i64::from_str_radix(o, 8).ok()
    } else if let Some(bin) = body.strip_prefix("0b") {
        i64::from_str_radix(bin, 2).ok()
    } else {
        body.parse::<i64>().ok()
    };
    if let Some(i) = int {
        return Some(Tok::Int(if neg { -i } else { i }));
    }
    let f: f64 = body.parse().ok()?;
    f.is_finite()
        .then_some(Tok::Float(if neg { -f } else { f }))
}

/// Reads `.A.B` from `p`; returns the names and the end.
fn lex_chain(src: &str, mut p: usize) -> (Vec<String>, usize) {
    let b = src.as_bytes();
    let mut chain = Vec::new();
    while b.get(p) == Some(&b'.') {
        let mut q = p + 1;
        while b
            .get(q)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
        {
            q += 1;
        }
        if q == p + 1 {
            // A lone '.' ends the chain (it is the dot itself).
            if chain.is_empty() {
                p = q;
            }
            break;
        }
        chain.push(src[p + 1..q].to_string());
        p = q;
    }
    (chain, p)
}

fn lex_string(src: &str, p: usize, line: usize) -> Result<(String, usize)> {
    let mut out = String::new();
    let mut it = src[p + 1..].char_indices();
    while let Some((i, c)) = it.next() {
        match c {
            '"' => return Ok((out, p + 1 + i + 1)),
            '\n' => break,
            '\\' => {
                let (_, e) = it
                    .next()
                    .ok_or_else(|| syntax(line, "unterminated quoted string"))?;
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'a' => out.push('\u{7}'),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'v' => out.push('\u{b}'),
                    '\\' => out.push('\\'),
                    '"' => out.push('"'),
                    '\'' => out.push('\''),
                    'x' | 'u' | 'U' => {
                        let n = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let hex: String = (0..n).filter_map(|_| it.next().map(|x| x.1)).collect();
                        let ch = u32::from_str_radix(&hex, 16)
                            .ok()
                            .and_then(char::from_u32)
                            .ok_or_else(|| syntax(line, "bad escape in quoted string"))?;
                        out.push(ch);
                    }
                    _ => return Err(syntax(line, format!("unknown escape \\{e}"))),
                }
            }
            c => out.push(c),
        }
    }
    Err(syntax(line, "unterminated quoted string"))
}
