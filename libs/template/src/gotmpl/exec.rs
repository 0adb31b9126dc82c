//! The interpreter: runs a parsed template over [`Val`] data, writing
//! segments that remember whether each piece came from the template.

use std::rc::Rc;

use super::parse::{Arg, Branch, Node, Pipe};
use crate::{taint, Error, ErrorKind, Limits, Result, Segment};

/// A value in a Go template.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    /// A missing key or nil: prints as nothing, false in conditions.
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// A string and whether it is trusted (written by the template).
    Str(Rc<str>, bool),
    List(Rc<Vec<Val>>),
    /// A struct or map: fields in order.
    Map(Rc<Vec<(String, Val)>>),
}

impl Val {
    pub(crate) fn str(s: &str, trusted: bool) -> Val {
        Val::Str(Rc::from(s), trusted)
    }

    fn truthy(&self) -> bool {
        match self {
            Val::Nil => false,
            Val::Bool(b) => *b,
            Val::Int(i) => *i != 0,
            Val::Float(f) => *f != 0.0,
            Val::Str(s, _) => !s.is_empty(),
            Val::List(l) => !l.is_empty(),
            Val::Map(m) => !m.is_empty(),
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Val::Nil => "nil",
            Val::Bool(_) => "bool",
            Val::Int(_) => "int",
            Val::Float(_) => "float64",
            Val::Str(..) => "string",
            Val::List(_) => "slice",
            Val::Map(_) => "map",
        }
    }

    /// The value from JSON; strings untrusted, object keys in their order.
    pub(crate) fn from_json(j: &serde_json::Value) -> Val {
        use serde_json::Value as J;
        match j {
            J::Null => Val::Nil,
            J::Bool(b) => Val::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Val::Int(i),
                None => Val::Float(n.as_f64().unwrap_or(0.0)),
            },
            J::String(s) => Val::str(s, false),
            J::Array(a) => Val::List(Rc::new(a.iter().map(Val::from_json).collect())),
            J::Object(o) => Val::Map(Rc::new(
                o.iter()
                    .map(|(k, v)| (k.clone(), Val::from_json(v)))
                    .collect(),
            )),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Val::Nil => J::Null,
            Val::Bool(b) => J::Bool(*b),
            Val::Int(i) => J::from(*i),
            Val::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Val::Str(s, _) => J::String(s.to_string()),
            Val::List(l) => J::Array(l.iter().map(Val::to_json).collect()),
            Val::Map(m) => J::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
        }
    }

    /// Go's `json.Marshal`: compact, with `<`, `>`, `&`, U+2028 and U+2029
    /// escaped (these occur only inside strings, so replacing is safe).
    fn go_json(&self) -> String {
        self.to_json()
            .to_string()
            .replace('<', "\\u003c")
            .replace('>', "\\u003e")
            .replace('&', "\\u0026")
            .replace('\u{2028}', "\\u2028")
            .replace('\u{2029}', "\\u2029")
    }

    /// The text `{{ v }}` prints and whether it is trusted. Lists and maps
    /// print as JSON, as Ollama's tool types do.
    fn text(&self) -> (String, bool) {
        match self {
            Val::Nil => (String::new(), true),
            Val::Bool(b) => (b.to_string(), true),
            Val::Int(i) => (i.to_string(), true),
            Val::Float(f) => (go_float(*f), true),
            Val::Str(s, t) => (s.to_string(), *t),
            Val::List(_) | Val::Map(_) => (self.go_json(), false),
        }
    }

    fn trusted(&self) -> bool {
        match self {
            Val::Str(_, t) => *t,
            Val::List(_) | Val::Map(_) => false,
            _ => true,
        }
    }
}

fn go_float(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e21 {
        format!("{f:.0}")
    } else {
        f.to_string()
    }
}

enum Flow {
    Normal,
    Break,
    Continue,
}

/// One run of a template.
pub(crate) struct Exec<'a> {
    limits: &'a Limits,
    steps: u64,
    out_len: usize,
    pub(crate) out: Vec<Segment>,
    vars: Vec<(String, Val)>,
    today: (i32, u8, u8),
    yesterday: (i32, u8, u8),
}

fn render_err(line: usize, msg: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Render,
        format!("go template: line {line}: {msg}"),
    )
}

impl<'a> Exec<'a> {
    pub(crate) fn new(limits: &'a Limits, now: time::OffsetDateTime) -> Exec<'a> {
        let ymd = |t: time::OffsetDateTime| (t.year(), u8::from(t.month()), t.day());
        Exec {
            limits,
            steps: 0,
            out_len: 0,
            out: Vec::new(),
            vars: Vec::new(),
            today: ymd(now),
            yesterday: ymd(now - time::Duration::days(1)),
        }
    }

    /// Runs `nodes` with `root` as both `.` and `$`, appending to the output.
    pub(crate) fn run(&mut self, nodes: &[Node], root: &Val) -> Result<()> {
        self.vars.clear();
        self.vars.push(("$".into(), root.clone()));
        self.list(nodes, root).map(|_| ())
    }

    fn step(&mut self, line: usize) -> Result<()> {
        self.steps += 1;
        if self.steps > self.limits.max_steps {
            return Err(Error::new(
                ErrorKind::TooManySteps,
                format!(
                    "go template: line {line}: more than {} steps",
                    self.limits.max_steps
                ),
            ));
        }
        Ok(())
    }

    fn emit(&mut self, text: String, trusted: bool) -> Result<()> {
        self.out_len += text.len();
        if self.out_len > self.limits.max_output_bytes {
            return Err(crate::jinja::output_too_large(self.limits.max_output_bytes));
        }
        taint::push(&mut self.out, text, trusted);
        Ok(())
    }

    fn list(&mut self, nodes: &[Node], dot: &Val) -> Result<Flow> {
        for n in nodes {
            match n {
                Node::Text(t) => {
                    self.step(0)?;
                    self.emit(t.clone(), true)?;
                }
                Node::Action(p) => {
                    self.step(p.line)?;
                    let v = self.pipe(p, dot)?;
                    if p.decl.is_empty() {
                        let (s, t) = v.text();
                        self.emit(s, t)?;
                    }
                }
                Node::If(b) | Node::With(b) => {
                    self.step(b.line)?;
                    let mark = self.vars.len();
                    let v = self.pipe(&b.pipe, dot)?;
                    let flow = if v.truthy() {
                        let d = if matches!(n, Node::With(_)) { &v } else { dot };
                        self.list(&b.then, d)?
                    } else {
                        self.list(&b.else_, dot)?
                    };
                    self.vars.truncate(mark);
                    if !matches!(flow, Flow::Normal) {
                        return Ok(flow);
                    }
                }
                Node::Range(b) => {
                    self.step(b.line)?;
                    self.range(b, dot)?;
                }
                Node::Break => return Ok(Flow::Break),
                Node::Continue => return Ok(Flow::Continue),
            }
        }
        Ok(Flow::Normal)
    }

    fn range(&mut self, b: &Branch, dot: &Val) -> Result<()> {
        let mark = self.vars.len();
        let mut decl = b.pipe.clone();
        let names = std::mem::take(&mut decl.decl);
        let v = self.pipe(&decl, dot)?;
        // Items are produced one at a time, so `range 1000000` allocates
        // nothing and stops at the step cap.
        let (count, sorted_map): (usize, Vec<(String, Val)>) = match &v {
            Val::List(l) => (l.len(), Vec::new()),
            Val::Map(m) => {
                let mut kv = m.to_vec();
                kv.sort_by(|a, b| a.0.cmp(&b.0));
                (kv.len(), kv)
            }
            Val::Int(n) => (usize::try_from(*n).unwrap_or(0), Vec::new()),
            Val::Nil => (0, Vec::new()),
            v => {
                return Err(render_err(
                    b.line,
                    format!("range can't iterate over {}", v.type_name()),
                ))
            }
        };
        if count == 0 {
            self.list(&b.else_, dot)?;
            self.vars.truncate(mark);
            return Ok(());
        }
        for idx in 0..count {
            self.step(b.line)?;
            let (k, x) = match &v {
                Val::List(l) => (Val::Int(idx as i64), l[idx].clone()),
                Val::Map(_) => {
                    let (k, x) = &sorted_map[idx];
                    (Val::str(k, false), x.clone())
                }
                _ => (Val::Int(idx as i64), Val::Int(idx as i64)),
            };
            match names.as_slice() {
                [e] => self.vars.push((e.clone(), x.clone())),
                [i, e] => {
                    self.vars.push((i.clone(), k));
                    self.vars.push((e.clone(), x.clone()));
                }
                _ => {}
            }
            let flow = self.list(&b.then, &x)?;
            self.vars.truncate(mark);
            if matches!(flow, Flow::Break) {
                break;
            }
        }
        Ok(())
    }

    fn pipe(&mut self, p: &Pipe, dot: &Val) -> Result<Val> {
        let mut prev: Option<Val> = None;
        for cmd in &p.cmds {
            prev = Some(self.command(cmd, dot, prev, p.line)?);
        }
        let v = prev.unwrap_or(Val::Nil);
        match p.decl.as_slice() {
            [] => {}
            [name] if p.assign => {
                let slot = self
                    .vars
                    .iter_mut()
                    .rev()
                    .find(|(n, _)| n == name)
                    .ok_or_else(|| render_err(p.line, format!("undefined variable: {name}")))?;
                slot.1 = v.clone();
            }
            [name] => self.vars.push((name.clone(), v.clone())),
            _ => return Err(render_err(p.line, "too many declarations")),
        }
        Ok(v)
    }

    fn var(&self, name: &str, line: usize) -> Result<Val> {
        self.vars
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| render_err(line, format!("undefined variable: {name}")))
    }

    fn arg(&mut self, a: &Arg, dot: &Val, line: usize) -> Result<Val> {
        Ok(match a {
            Arg::Dot => dot.clone(),
            Arg::Field(ch) => chain(dot.clone(), ch, line)?,
            Arg::Var(v, ch) => chain(self.var(v, line)?, ch, line)?,
            Arg::Str(s) => Val::str(s, true),
            Arg::Int(i) => Val::Int(*i),
            Arg::Float(f) => Val::Float(*f),
            Arg::Bool(b) => Val::Bool(*b),
            Arg::Nil => Val::Nil,
            Arg::Sub(p, ch) => {
                let v = self.pipe(p, dot)?;
                chain(v, ch, line)?
            }
            Arg::Func(f) => self.call(f, &[], dot, None, line)?,
        })
    }

    fn command(&mut self, cmd: &[Arg], dot: &Val, prev: Option<Val>, line: usize) -> Result<Val> {
        match &cmd[0] {
            Arg::Func(f) => self.call(f, &cmd[1..], dot, prev, line),
            a => {
                if cmd.len() > 1 || prev.is_some() {
                    return Err(render_err(line, "can't give argument to non-function"));
                }
                self.arg(a, dot, line)
            }
        }
    }

    fn call(
        &mut self,
        f: &str,
        args: &[Arg],
        dot: &Val,
        prev: Option<Val>,
        line: usize,
    ) -> Result<Val> {
        self.step(line)?;
        // `and`/`or` stop at the first falsy/truthy argument, as Go 1.18+ does.
        if f == "and" || f == "or" {
            if args.is_empty() && prev.is_none() {
                return Err(render_err(line, format!("wrong number of args for {f}")));
            }
            let mut last = Val::Nil;
            for a in args {
                last = self.arg(a, dot, line)?;
                if last.truthy() == (f == "or") {
                    return Ok(last);
                }
            }
            if let Some(p) = prev {
                last = p;
            }
            return Ok(last);
        }
        let mut v = Vec::with_capacity(args.len() + 1);
        for a in args {
            v.push(self.arg(a, dot, line)?);
        }
        v.extend(prev);
        let n = |want: usize| -> Result<()> {
            if v.len() != want {
                return Err(render_err(
                    line,
                    format!("wrong number of args for {f}: want {want} got {}", v.len()),
                ));
            }
            Ok(())
        };
        let cap = self.limits.max_output_bytes;
        let limit = |s: String, trusted: bool| -> Result<Val> {
            if s.len() > cap {
                return Err(crate::jinja::output_too_large(cap));
            }
            Ok(Val::str(&s, trusted))
        };
        match f {
            "not" => {
                n(1)?;
                Ok(Val::Bool(!v[0].truthy()))
            }
            "eq" => {
                if v.len() < 2 {
                    return Err(render_err(line, "missing argument for comparison"));
                }
                for x in &v[1..] {
                    if equal(&v[0], x, line)? {
                        return Ok(Val::Bool(true));
                    }
                }
                Ok(Val::Bool(false))
            }
            "ne" => {
                n(2)?;
                Ok(Val::Bool(!equal(&v[0], &v[1], line)?))
            }
            "lt" | "le" | "gt" | "ge" => {
                n(2)?;
                let o = order(&v[0], &v[1], line)?;
                Ok(Val::Bool(match f {
                    "lt" => o.is_lt(),
                    "le" => o.is_le(),
                    "gt" => o.is_gt(),
                    _ => o.is_ge(),
                }))
            }
            "len" => {
                n(1)?;
                Ok(Val::Int(match &v[0] {
                    Val::Str(s, _) => s.len(),
                    Val::List(l) => l.len(),
                    Val::Map(m) => m.len(),
                    x => return Err(render_err(line, format!("len of type {}", x.type_name()))),
                } as i64))
            }
            "index" => {
                if v.is_empty() {
                    return Err(render_err(line, "wrong number of args for index"));
                }
                let mut cur = v[0].clone();
                for k in &v[1..] {
                    cur = index(&cur, k, line)?;
                }
                Ok(cur)
            }
            "slice" => {
                if v.is_empty() || v.len() > 3 {
                    return Err(render_err(line, "wrong number of args for slice"));
                }
                let len = match &v[0] {
                    Val::Str(s, _) => s.len(),
                    Val::List(l) => l.len(),
                    x => {
                        return Err(render_err(
                            line,
                            format!("can't slice item of type {}", x.type_name()),
                        ))
                    }
                };
                let idx = |x: &Val| match x {
                    Val::Int(i) if *i >= 0 => Ok(*i as usize),
                    _ => Err(render_err(
                        line,
                        "slice index must be a non-negative integer",
                    )),
                };
                let i = v.get(1).map(idx).transpose()?.unwrap_or(0);
                let j = v.get(2).map(idx).transpose()?.unwrap_or(len);
                if i > j || j > len {
                    return Err(render_err(
                        line,
                        format!("slice index out of range: {i}:{j} of {len}"),
                    ));
                }
                // Slicing copies: charge one step per 64 items, so that
                // `slice $.Messages $i` in a loop stays within the budget
                // for real conversations but not for hostile ones.
                self.steps += ((j - i) / 64) as u64;
                self.step(line)?;
                Ok(match &v[0] {
                    Val::Str(s, t) => Val::str(
                        s.get(i..j)
                            .ok_or_else(|| render_err(line, "slice splits a utf-8 character"))?,
                        *t,
                    ),
                    Val::List(l) => Val::List(Rc::new(l[i..j].to_vec())),
                    _ => Val::Nil,
                })
            }
            "print" | "println" => {
                let mut s = String::new();
                for (k, x) in v.iter().enumerate() {
                    let str_ = |x: &Val| matches!(x, Val::Str(..));
                    if k > 0 && (f == "println" || (!str_(x) && !str_(&v[k - 1]))) {
                        s.push(' ');
                    }
                    s.push_str(&x.text().0);
                }
                if f == "println" {
                    s.push('\n');
                }
                limit(s, v.iter().all(Val::trusted))
            }
            "printf" => {
                let Some(Val::Str(fmt, _)) = v.first() else {
                    return Err(render_err(line, "printf needs a format string"));
                };
                let s = printf(fmt, &v[1..]);
                limit(s, v.iter().all(Val::trusted))
            }
            "json" => {
                n(1)?;
                limit(v[0].go_json(), false)
            }
            "html" | "urlquery" => {
                let s: String = v.iter().map(|x| x.text().0).collect();
                let out = if f == "html" {
                    s.replace('&', "&amp;")
                        .replace('<', "&lt;")
                        .replace('>', "&gt;")
                        .replace('"', "&#34;")
                        .replace('\'', "&#39;")
                } else {
                    s.bytes()
                        .map(|b| {
                            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                                (b as char).to_string()
                            } else if b == b' ' {
                                "+".into()
                            } else {
                                format!("%{b:02X}")
                            }
                        })
                        .collect()
                };
                limit(out, v.iter().all(Val::trusted))
            }
            "currentDate" | "yesterdayDate" => {
                let (y, m, d) = if f == "currentDate" {
                    self.today
                } else {
                    self.yesterday
                };
                Ok(Val::str(&format!("{y:04}-{m:02}-{d:02}"), true))
            }
            _ => Err(render_err(line, format!("function {f:?} not defined"))),
        }
    }
}

/// `.A.B` on `v`. A missing key is nil (Ollama's `missingkey=zero`); a key
/// is looked up as written, then with its first letter lowercased, so that
/// `.Function.Name` reads the JSON `{"function":{"name":…}}` of a tool.
fn chain(mut v: Val, names: &[String], line: usize) -> Result<Val> {
    for name in names {
        v = match &v {
            Val::Map(m) => {
                let lower = {
                    let mut c = name.chars();
                    c.next()
                        .map(|f| f.to_lowercase().chain(c).collect::<String>())
                        .unwrap_or_default()
                };
                m.iter()
                    .find(|(k, _)| k == name)
                    .or_else(|| m.iter().find(|(k, _)| *k == lower))
                    .map(|(_, x)| x.clone())
                    .unwrap_or(Val::Nil)
            }
            Val::Nil => Val::Nil,
            x => {
                return Err(render_err(
                    line,
                    format!("can't evaluate field {name} in type {}", x.type_name()),
                ))
            }
        };
    }
    Ok(v)
}

fn index(v: &Val, k: &Val, line: usize) -> Result<Val> {
    match (v, k) {
        (Val::List(l), Val::Int(i)) => l
            .get(usize::try_from(*i).unwrap_or(usize::MAX))
            .cloned()
            .ok_or_else(|| render_err(line, format!("index out of range: {i}"))),
        (Val::Str(s, _), Val::Int(i)) => s
            .as_bytes()
            .get(usize::try_from(*i).unwrap_or(usize::MAX))
            .map(|b| Val::Int(i64::from(*b)))
            .ok_or_else(|| render_err(line, format!("index out of range: {i}"))),
        (Val::Map(m), Val::Str(key, _)) => Ok(m
            .iter()
            .find(|(n, _)| **n == **key)
            .map(|(_, x)| x.clone())
            .unwrap_or(Val::Nil)),
        (Val::Nil, _) => Err(render_err(line, "index of untyped nil")),
        (x, k) => Err(render_err(
            line,
            format!(
                "can't index item of type {} with {}",
                x.type_name(),
                k.type_name()
            ),
        )),
    }
}

fn equal(a: &Val, b: &Val, line: usize) -> Result<bool> {
    Ok(match (a, b) {
        (Val::Str(x, _), Val::Str(y, _)) => x == y,
        (Val::Int(x), Val::Int(y)) => x == y,
        (Val::Float(x), Val::Float(y)) => x == y,
        (Val::Int(x), Val::Float(y)) | (Val::Float(y), Val::Int(x)) => *x as f64 == *y,
        (Val::Bool(x), Val::Bool(y)) => x == y,
        (Val::Nil, Val::Nil) => true,
        (Val::Nil, _) | (_, Val::Nil) => false,
        (x, y) if x.type_name() == y.type_name() => {
            return Err(render_err(
                line,
                format!("non-comparable type {}", x.type_name()),
            ))
        }
        (x, y) => {
            return Err(render_err(
                line,
                format!(
                    "incompatible types for comparison: {} and {}",
                    x.type_name(),
                    y.type_name()
                ),
            ))
        }
    })
}

fn order(a: &Val, b: &Val, line: usize) -> Result<std::cmp::Ordering> {
    let o = match (a, b) {
        (Val::Str(x, _), Val::Str(y, _)) => Some(x.cmp(y)),
        (Val::Int(x), Val::Int(y)) => Some(x.cmp(y)),
        (Val::Float(x), Val::Float(y)) => x.partial_cmp(y),
        (Val::Int(x), Val::Float(y)) => (*x as f64).partial_cmp(y),
        (Val::Float(x), Val::Int(y)) => x.partial_cmp(&(*y as f64)),
        _ => None,
    };
    o.ok_or_else(|| {
        render_err(
            line,
            format!(
                "incompatible types for comparison: {} and {}",
                a.type_name(),
                b.type_name()
            ),
        )
    })
}

/// A basic `fmt.Sprintf`: `%s %v %d %q %t %f %x %%`, widths ignored.
fn printf(fmt: &str, args: &[Val]) -> String {
    let mut out = String::new();
    let mut it = fmt.chars().peekable();
    let mut next = args.iter();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        // Skip flags, width and precision.
        while it.peek().is_some_and(|c| "+-# 0123456789.".contains(*c)) {
            it.next();
        }
        let Some(verb) = it.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(a) = next.next() else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        match verb {
            'q' => out.push_str(&serde_json::Value::String(a.text().0).to_string()),
            'x' => match a {
                Val::Int(i) => out.push_str(&format!("{i:x}")),
                x => out.extend(x.text().0.bytes().map(|b| format!("{b:02x}"))),
            },
            'f' => match a {
                Val::Float(f) => out.push_str(&format!("{f:.6}")),
                Val::Int(i) => out.push_str(&format!("%!f(int={i})")),
                x => out.push_str(&x.text().0),
            },
            _ => out.push_str(&a.text().0),
        }
    }
    for extra in next {
        out.push_str(&format!(
            "%!(EXTRA {}={})",
            extra.type_name(),
            extra.text().0
        ));
    }
    out
}
