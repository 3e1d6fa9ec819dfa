//! The dtab parser: a hand-written recursive-descent parser over bytes with precise errors.
//!
//! Grammar (Finagle's `NameTreeParsers`, whitespace allowed between tokens):
//!
//! ```text
//! dtab     ::= [ dentry { ';' dentry } [ ';' ] ]
//! dentry   ::= prefix '=>' tree
//! prefix   ::= '/' | { '/' ( label | '*' ) }+
//! tree     ::= union { '|' union }
//! union    ::= weighted { '&' weighted }
//! weighted ::= [ number '*' ] simple
//! simple   ::= '(' tree ')' | path | '~' | '!' | '$'
//! path     ::= '/' | { '/' label }+
//! label    ::= { showable | '\x' hex hex }+      showable = [A-Za-z0-9_:.#$%-]
//! number   ::= digits [ '.' digits ] | '.' digits
//! ```
//!
//! Parentheses nest at most [`MAX_NESTING`] deep so hostile input cannot exhaust the stack.

use std::fmt;
use std::sync::Arc;

use super::path::{is_showable, Path};
use super::table::{Dentry, Dtab, Prefix, PrefixElem};
use super::tree::{NameTree, Weighted, DEFAULT_WEIGHT};

/// How deep parentheses may nest in a name tree.
pub const MAX_NESTING: usize = 32;

/// What was being parsed when a [`DtabError`] happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    /// A delegation table.
    Dtab,
    /// A single dentry.
    Dentry,
    /// A name tree.
    NameTree,
    /// A path.
    Path,
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Subject::Dtab => "dtab",
            Subject::Dentry => "dentry",
            Subject::NameTree => "name tree",
            Subject::Path => "path",
        })
    }
}

/// What the parser found where it expected something else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// A character (shown escaped, so the message is always printable ASCII).
    Char(char),
    /// The end of the input.
    End,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::Char(c) => write!(f, "'{}'", c.escape_default()),
            Found::End => f.write_str("end of input"),
        }
    }
}

/// A syntax error in a dtab, dentry, name tree or path, with the byte offset where it was found.
///
/// The message is printable ASCII, so it can go into an `l5d-err` header as it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {subject} at byte {offset}: expected {expected}, found {found}")]
pub struct DtabError {
    /// What was being parsed.
    pub subject: Subject,
    /// Byte offset into the input.
    pub offset: usize,
    /// What the parser expected there.
    pub expected: &'static str,
    /// What it found instead.
    pub found: Found,
}

struct Parser<'a> {
    src: &'a str,
    bytes: &'a [u8],
    pos: usize,
    subject: Subject,
}

pub(crate) fn parse_dtab(s: &str) -> Result<Dtab, DtabError> {
    let mut p = Parser::new(s, Subject::Dtab);
    let mut entries = Vec::new();
    p.ws();
    while !p.at_end() {
        entries.push(p.dentry()?);
        p.ws();
        if p.eat(b';') {
            p.ws();
        } else if !p.at_end() {
            return Err(p.err("';' or end of input"));
        }
    }
    Ok(Dtab::from_entries(entries))
}

pub(crate) fn parse_dentry(s: &str) -> Result<Dentry, DtabError> {
    let mut p = Parser::new(s, Subject::Dentry);
    p.ws();
    let d = p.dentry()?;
    p.ws();
    p.eat(b';');
    p.ws();
    p.end()?;
    Ok(d)
}

pub(crate) fn parse_tree(s: &str) -> Result<NameTree<Path>, DtabError> {
    let mut p = Parser::new(s, Subject::NameTree);
    p.ws();
    let t = p.tree(0)?;
    p.ws();
    p.end()?;
    Ok(t)
}

pub(crate) fn parse_path(s: &str) -> Result<Path, DtabError> {
    let mut p = Parser::new(s, Subject::Path);
    let path = p.path()?;
    p.end()?;
    Ok(path)
}

impl<'a> Parser<'a> {
    fn new(src: &'a str, subject: Subject) -> Self {
        Self {
            src,
            bytes: src.as_bytes(),
            pos: 0,
            subject,
        }
    }

    fn err(&self, expected: &'static str) -> DtabError {
        self.err_at(self.pos, expected)
    }

    fn err_at(&self, offset: usize, expected: &'static str) -> DtabError {
        let found = self
            .src
            .get(offset..)
            .and_then(|rest| rest.chars().next())
            .map_or(Found::End, Found::Char);
        DtabError {
            subject: self.subject,
            offset,
            expected,
            found,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn end(&self) -> Result<(), DtabError> {
        if self.at_end() {
            Ok(())
        } else {
            Err(self.err("end of input"))
        }
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b) if b.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn dentry(&mut self) -> Result<Dentry, DtabError> {
        let prefix = self.prefix()?;
        self.ws();
        if !(self.bytes[self.pos..].starts_with(b"=>")) {
            return Err(self.err("'=>'"));
        }
        self.pos += 2;
        self.ws();
        let dst = self.tree(0)?;
        Ok(Dentry::new(prefix, dst))
    }

    fn prefix(&mut self) -> Result<Prefix, DtabError> {
        if self.peek() != Some(b'/') {
            return Err(self.err("'/' starting a prefix"));
        }
        let mut elems = Vec::new();
        while self.peek() == Some(b'/') {
            self.pos += 1;
            if self.eat(b'*') {
                elems.push(PrefixElem::Any);
            } else if self.at_label() {
                elems.push(PrefixElem::Label(self.label()?));
            } else if elems.is_empty() {
                // `/` alone: the empty prefix, which matches every path.
                return Ok(Prefix::new(elems));
            } else {
                return Err(self.err("a label or '*'"));
            }
        }
        Ok(Prefix::new(elems))
    }

    fn path(&mut self) -> Result<Path, DtabError> {
        if self.peek() != Some(b'/') {
            return Err(self.err("'/' starting a path"));
        }
        let mut segs: Vec<Arc<str>> = Vec::new();
        while self.peek() == Some(b'/') {
            self.pos += 1;
            if self.at_label() {
                segs.push(self.label()?);
            } else if segs.is_empty() {
                break;
            } else {
                return Err(self.err("a label"));
            }
        }
        Ok(Path::from_segments(segs).unwrap_or_default())
    }

    fn at_label(&self) -> bool {
        matches!(self.peek(), Some(b) if is_showable(b) || b == b'\\')
    }

    fn label(&mut self) -> Result<Arc<str>, DtabError> {
        let start = self.pos;
        let mut escaped = false;
        while let Some(b) = self.peek() {
            if is_showable(b) {
                self.pos += 1;
            } else if b == b'\\' {
                escaped = true;
                self.pos += 1;
                if !self.eat(b'x') {
                    return Err(self.err("'x' after '\\' (an escape is \\xHH)"));
                }
                for _ in 0..2 {
                    match self.peek() {
                        Some(h) if h.is_ascii_hexdigit() => self.pos += 1,
                        _ => return Err(self.err("a hexadecimal digit")),
                    }
                }
            } else {
                break;
            }
        }
        let raw = &self.src[start..self.pos];
        if !escaped {
            return Ok(Arc::from(raw));
        }
        let mut out = Vec::with_capacity(raw.len());
        let rb = raw.as_bytes();
        let mut i = 0;
        while i < rb.len() {
            if rb[i] == b'\\' {
                let hex = &raw[i + 2..i + 4];
                let v = u8::from_str_radix(hex, 16).map_err(|_| self.err_at(start + i, "\\xHH"))?;
                out.push(v);
                i += 4;
            } else {
                out.push(rb[i]);
                i += 1;
            }
        }
        String::from_utf8(out)
            .map(Arc::from)
            .map_err(|_| self.err_at(start, "a label whose escapes form UTF-8"))
    }

    fn tree(&mut self, depth: usize) -> Result<NameTree<Path>, DtabError> {
        let first = self.union(depth)?;
        self.ws();
        if self.peek() != Some(b'|') {
            return Ok(first);
        }
        let mut alts = vec![first];
        while self.eat(b'|') {
            self.ws();
            alts.push(self.union(depth)?);
            self.ws();
        }
        Ok(NameTree::Alt(alts))
    }

    fn union(&mut self, depth: usize) -> Result<NameTree<Path>, DtabError> {
        let first = self.weighted(depth)?;
        self.ws();
        if self.peek() != Some(b'&') {
            return Ok(if first.weight == DEFAULT_WEIGHT {
                first.tree
            } else {
                NameTree::Union(vec![first])
            });
        }
        let mut members = vec![first];
        while self.eat(b'&') {
            self.ws();
            members.push(self.weighted(depth)?);
            self.ws();
        }
        Ok(NameTree::Union(members))
    }

    fn weighted(&mut self, depth: usize) -> Result<Weighted<Path>, DtabError> {
        let weight = match self.peek() {
            Some(b) if b.is_ascii_digit() || b == b'.' => {
                let w = self.number()?;
                self.ws();
                if !self.eat(b'*') {
                    return Err(self.err("'*' after a weight"));
                }
                self.ws();
                w
            }
            _ => DEFAULT_WEIGHT,
        };
        let tree = self.simple(depth)?;
        Ok(Weighted { weight, tree })
    }

    fn number(&mut self) -> Result<f64, DtabError> {
        let start = self.pos;
        let int_digits = self.digits();
        let mut frac_digits = 0;
        if self.eat(b'.') {
            frac_digits = self.digits();
        }
        if int_digits == 0 && frac_digits == 0 {
            return Err(self.err_at(start, "a weight (digits)"));
        }
        let text = &self.src[start..self.pos];
        match text.parse::<f64>() {
            Ok(w) if w.is_finite() => Ok(w),
            _ => Err(self.err_at(start, "a finite weight")),
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b) if b.is_ascii_digit()) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn simple(&mut self, depth: usize) -> Result<NameTree<Path>, DtabError> {
        match self.peek() {
            Some(b'(') => {
                if depth >= MAX_NESTING {
                    return Err(self.err("at most 32 nested parentheses"));
                }
                self.pos += 1;
                self.ws();
                let t = self.tree(depth + 1)?;
                self.ws();
                if !self.eat(b')') {
                    return Err(self.err("')'"));
                }
                Ok(t)
            }
            Some(b'/') => Ok(NameTree::Leaf(self.path()?)),
            Some(b'~') => {
                self.pos += 1;
                Ok(NameTree::Neg)
            }
            Some(b'!') => {
                self.pos += 1;
                Ok(NameTree::Fail)
            }
            Some(b'$') => {
                self.pos += 1;
                Ok(NameTree::Empty)
            }
            _ => Err(self.err("a path, '~', '!', '$' or '('")),
        }
    }
}
