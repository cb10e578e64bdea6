//! The APIv2 XML codec: a hardened reader for flat `<xml>` documents and a writer that
//! escapes correctly.
//!
//! WeChat Pay's APIv2 bodies are one root element whose children are fields holding text or
//! CDATA. The reader accepts exactly that and refuses everything else *before* any field is
//! looked at: a DOCTYPE (so no XXE, no entity expansion, no external DTD, no billion laughs),
//! entity references other than the five predefined ones, processing instructions, nested
//! elements, attributes, duplicate fields (which of two `total_fee` values was signed?),
//! bytes that are not UTF-8, and bodies over a size bound. It is a purpose-built reader
//! rather than a general XML parser because the grammar it must accept is tiny, and every
//! construct it does not implement is one that cannot be abused.

use std::borrow::Cow;
use std::fmt;

use crate::{Error, Fields};

/// The default bound on the size of a body: WeChat Pay's largest APIv2 bodies (a
/// `unifiedorder` with a 6000-character `detail`) stay far below it.
pub const DEFAULT_MAX_LEN: usize = 64 * 1024;
/// The default bound on the number of fields in one document.
pub const DEFAULT_MAX_FIELDS: usize = 512;

/// How [`read_with`] reads a document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadOptions {
    /// The name the root element must have: `xml` for APIv2 bodies, `root` for the decrypted
    /// `req_info` of a refund notification.
    pub root: &'static str,
    /// Bodies longer than this many bytes are refused unread.
    pub max_len: usize,
    /// Documents with more fields than this are refused.
    pub max_fields: usize,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            root: "xml",
            max_len: DEFAULT_MAX_LEN,
            max_fields: DEFAULT_MAX_FIELDS,
        }
    }
}

/// Why the reader refused a document.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum XmlErrorKind {
    /// The body is empty or only whitespace.
    Empty,
    /// The body is longer than the configured bound.
    TooLarge {
        /// The body's length in bytes.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The body is not valid UTF-8 (WeChat Pay sends and expects UTF-8 only).
    NotUtf8,
    /// The XML declaration names another encoding than UTF-8.
    EncodingNotUtf8 {
        /// The declared encoding.
        declared: String,
    },
    /// A `<!DOCTYPE …>` declaration: the door to XXE and entity expansion, never legitimate
    /// in a WeChat Pay message.
    Doctype,
    /// An entity reference other than `&lt; &gt; &amp; &apos; &quot;` and character references.
    EntityReference {
        /// The entity's name.
        name: String,
    },
    /// A processing instruction (`<?…?>` other than the XML declaration at the very start).
    ProcessingInstruction,
    /// An element inside a field: APIv2 documents are flat.
    Nested {
        /// The field that contains the element.
        field: String,
    },
    /// The same field twice.
    DuplicateField {
        /// The repeated field.
        name: String,
    },
    /// The root element is not the expected one.
    WrongRoot {
        /// What the root must be called.
        expected: &'static str,
        /// What it is called.
        found: String,
    },
    /// The document ends before its root element is closed.
    UnexpectedEof,
    /// More fields than the configured bound.
    TooManyFields {
        /// The bound.
        max: usize,
    },
    /// A character that XML 1.0 does not allow (control characters, U+FFFE, U+FFFF).
    InvalidChar {
        /// The character's code point.
        code_point: u32,
    },
    /// An element with attributes: WeChat Pay never sends them.
    Attribute {
        /// The element carrying them.
        element: String,
    },
    /// Text or CDATA directly inside the root, outside any field.
    TextOutsideField,
    /// Something after the root element other than whitespace and comments.
    TrailingContent,
    /// An end tag that does not close the element that is open.
    MismatchedEndTag {
        /// The element that is open.
        expected: String,
        /// The end tag found.
        found: String,
    },
    /// Anything else that is not well-formed XML.
    Malformed {
        /// What was wrong.
        what: &'static str,
    },
}

/// A document refused by the reader, with the byte offset where the problem was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XmlError {
    /// What was wrong.
    pub kind: XmlErrorKind,
    /// Byte offset into the body.
    pub offset: usize,
}

impl XmlError {
    fn new(kind: XmlErrorKind, offset: usize) -> XmlError {
        XmlError { kind, offset }
    }
}

impl fmt::Display for XmlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use XmlErrorKind as K;
        match &self.kind {
            K::Empty => write!(f, "the body is empty"),
            K::TooLarge { len, max } => write!(f, "the body has {len} bytes, more than the limit of {max}"),
            K::NotUtf8 => write!(f, "the body is not UTF-8 (invalid byte at offset {})", self.offset),
            K::EncodingNotUtf8 { declared } => write!(
                f,
                "the XML declaration says encoding={declared:?}; only UTF-8 is accepted"
            ),
            K::Doctype => write!(
                f,
                "a DOCTYPE declaration at offset {} (refused: XXE and entity expansion)",
                self.offset
            ),
            K::EntityReference { name } => write!(
                f,
                "entity reference &{name}; at offset {} (only the five predefined entities are allowed)",
                self.offset
            ),
            K::ProcessingInstruction => write!(f, "a processing instruction at offset {}", self.offset),
            K::Nested { field } => write!(f, "an element nested inside field `{field}` at offset {}", self.offset),
            K::DuplicateField { name } => write!(f, "field `{name}` appears twice (offset {})", self.offset),
            K::WrongRoot { expected, found } => write!(f, "the root element is <{found}>, expected <{expected}>"),
            K::UnexpectedEof => write!(f, "the document ends early (offset {})", self.offset),
            K::TooManyFields { max } => write!(f, "more than {max} fields"),
            K::InvalidChar { code_point } => write!(
                f,
                "character U+{code_point:04X} at offset {} is not allowed in XML",
                self.offset
            ),
            K::Attribute { element } => write!(f, "element <{element}> has attributes (offset {})", self.offset),
            K::TextOutsideField => write!(f, "text outside any field at offset {}", self.offset),
            K::TrailingContent => write!(f, "content after the root element at offset {}", self.offset),
            K::MismatchedEndTag { expected, found } => write!(
                f,
                "end tag </{found}> at offset {} does not close <{expected}>",
                self.offset
            ),
            K::Malformed { what } => write!(f, "malformed XML at offset {}: {what}", self.offset),
        }
    }
}

impl std::error::Error for XmlError {}

/// Reads an APIv2 body (root `<xml>`) with the default bounds.
///
/// # Errors
/// An [`XmlError`] naming the first problem; see the module documentation.
pub fn read(body: &[u8]) -> Result<Fields<'_>, XmlError> {
    read_with(body, &ReadOptions::default())
}

/// Reads a flat document with explicit options.
///
/// # Errors
/// An [`XmlError`] naming the first problem; see the module documentation.
pub fn read_with<'a>(body: &'a [u8], opts: &ReadOptions) -> Result<Fields<'a>, XmlError> {
    if body.len() > opts.max_len {
        return Err(XmlError::new(
            XmlErrorKind::TooLarge {
                len: body.len(),
                max: opts.max_len,
            },
            opts.max_len,
        ));
    }
    let s = match std::str::from_utf8(body) {
        Ok(s) => s,
        Err(e) => return Err(XmlError::new(XmlErrorKind::NotUtf8, e.valid_up_to())),
    };
    Reader {
        s,
        b: body,
        pos: 0,
        opts,
    }
    .document()
}

// Byte classes for the scanning loops. A byte in class 0 needs no attention.
const C_PLAIN: u8 = 0;
const C_LT: u8 = 1;
const C_AMP: u8 = 2;
const C_CR: u8 = 3;
const C_BRACKET: u8 = 4;
const C_CONTROL: u8 = 5;
const C_EF: u8 = 6;

const CLASS: [u8; 256] = {
    let mut t = [C_PLAIN; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = C_CONTROL;
        i += 1;
    }
    t[b'\t' as usize] = C_PLAIN;
    t[b'\n' as usize] = C_PLAIN;
    t[b'\r' as usize] = C_CR;
    t[b'<' as usize] = C_LT;
    t[b'&' as usize] = C_AMP;
    t[b']' as usize] = C_BRACKET;
    // 0xEF starts the three-byte forms of U+FFFE and U+FFFF, which XML forbids.
    t[0xEF] = C_EF;
    t
};

/// The characters allowed after the first one of an element name.
const NAME_CHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.';
        c += 1;
    }
    t
};

/// Inside CDATA, `<` and `&` are ordinary characters.
const CDATA_CLASS: [u8; 256] = {
    let mut t = CLASS;
    t[b'<' as usize] = C_PLAIN;
    t[b'&' as usize] = C_PLAIN;
    t
};

/// The number of leading bytes of `b` that need no attention. Kept as a tight loop: it is
/// where the reader spends its time on long values.
#[inline]
fn plain_run(b: &[u8], class: &[u8; 256]) -> usize {
    b.iter()
        .position(|c| class[usize::from(*c)] != C_PLAIN)
        .unwrap_or(b.len())
}

struct Reader<'a, 'o> {
    s: &'a str,
    b: &'a [u8],
    pos: usize,
    opts: &'o ReadOptions,
}

impl<'a> Reader<'a, '_> {
    fn err<T>(&self, kind: XmlErrorKind) -> Result<T, XmlError> {
        Err(XmlError::new(kind, self.pos))
    }

    fn malformed<T>(&self, what: &'static str) -> Result<T, XmlError> {
        self.err(XmlErrorKind::Malformed { what })
    }

    fn starts_with(&self, p: &[u8]) -> bool {
        self.b[self.pos..].starts_with(p)
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.b.get(self.pos) {
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn eof<T>(&self) -> Result<T, XmlError> {
        Err(XmlError::new(XmlErrorKind::UnexpectedEof, self.b.len()))
    }

    fn document(mut self) -> Result<Fields<'a>, XmlError> {
        // A byte order mark is legal XML; it carries no data.
        if self.starts_with("\u{FEFF}".as_bytes()) {
            self.pos = 3;
        }
        if self.s[self.pos..].trim().is_empty() {
            return self.err(XmlErrorKind::Empty);
        }
        if self.starts_with(b"<?xml")
            && self
                .b
                .get(self.pos + 5)
                .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'?'))
        {
            self.declaration()?;
        }
        // The prolog: whitespace and comments only.
        loop {
            self.skip_ws();
            if self.pos >= self.b.len() {
                return self.eof();
            }
            if self.starts_with(b"<!--") {
                self.comment()?;
            } else if self.starts_with(b"<!") {
                return self.markup_decl();
            } else if self.starts_with(b"<?") {
                return self.err(XmlErrorKind::ProcessingInstruction);
            } else if self.b[self.pos] == b'<' {
                break;
            } else {
                return self.malformed("text before the root element");
            }
        }
        let root_at = self.pos;
        self.pos += 1;
        let root = self.name()?;
        let empty_root = self.tag_end(root)?;
        if root != self.opts.root {
            return Err(XmlError::new(
                XmlErrorKind::WrongRoot {
                    expected: self.opts.root,
                    found: root.to_owned(),
                },
                root_at,
            ));
        }
        let mut fields = Fields::with_capacity(24);
        if !empty_root {
            self.fields(root, &mut fields)?;
        }
        // The epilog: whitespace and comments only.
        loop {
            self.skip_ws();
            if self.pos >= self.b.len() {
                return Ok(fields);
            }
            if self.starts_with(b"<!--") {
                self.comment()?;
            } else if self.starts_with(b"<?") {
                return self.err(XmlErrorKind::ProcessingInstruction);
            } else if self.starts_with(b"<!") {
                return self.markup_decl();
            } else {
                return self.err(XmlErrorKind::TrailingContent);
            }
        }
    }

    /// `<!…` that is not a comment: a DOCTYPE or other declaration, always refused.
    fn markup_decl<T>(&self) -> Result<T, XmlError> {
        if self.starts_with(b"<!DOCTYPE") || self.starts_with(b"<!doctype") || self.starts_with(b"<!ENTITY") {
            self.err(XmlErrorKind::Doctype)
        } else if self.starts_with(b"<![CDATA[") {
            self.err(XmlErrorKind::TextOutsideField)
        } else {
            self.malformed("markup declaration")
        }
    }

    fn declaration(&mut self) -> Result<(), XmlError> {
        let start = self.pos;
        let Some(end) = self.s[self.pos..].find("?>") else {
            return self.eof();
        };
        let decl = &self.s[start + 5..start + end];
        self.pos = start + end + 2;
        if let Some(i) = decl.find("encoding") {
            let rest = decl[i + 8..].trim_start();
            let rest = rest.strip_prefix('=').map(str::trim_start).unwrap_or("");
            let value = match rest.chars().next() {
                Some(q @ ('"' | '\'')) => rest[1..].split(q).next().unwrap_or(""),
                _ => "",
            };
            if !value.eq_ignore_ascii_case("utf-8") && !value.eq_ignore_ascii_case("utf8") {
                return Err(XmlError::new(
                    XmlErrorKind::EncodingNotUtf8 {
                        declared: value.to_owned(),
                    },
                    start,
                ));
            }
        }
        Ok(())
    }

    fn comment(&mut self) -> Result<(), XmlError> {
        let body_start = self.pos + 4;
        let Some(end) = self.s[body_start..].find("--") else {
            return self.eof();
        };
        let end = body_start + end;
        if !self.s[end..].starts_with("-->") {
            self.pos = end;
            return self.malformed("`--` inside a comment");
        }
        self.check_chars(body_start, end)?;
        self.pos = end + 3;
        Ok(())
    }

    /// Reads an element name at `pos`. Names are restricted to what WeChat Pay uses: ASCII
    /// letters, digits, `_`, `-` and `.`, starting with a letter or `_`.
    fn name(&mut self) -> Result<&'a str, XmlError> {
        let start = self.pos;
        match self.b.get(self.pos) {
            None => return self.eof(),
            Some(c) if c.is_ascii_alphabetic() || *c == b'_' => self.pos += 1,
            Some(b'!') if self.starts_with(b"!DOCTYPE") => {
                self.pos -= 1;
                return self.err(XmlErrorKind::Doctype);
            }
            Some(b'?') => {
                self.pos -= 1;
                return self.err(XmlErrorKind::ProcessingInstruction);
            }
            Some(_) => return self.malformed("an element name must start with an ASCII letter or `_`"),
        }
        let rest = &self.b[self.pos..];
        let len = rest
            .iter()
            .position(|c| !NAME_CHAR[usize::from(*c)])
            .unwrap_or(rest.len());
        self.pos += len;
        Ok(&self.s[start..self.pos])
    }

    /// After a start tag's name: optional whitespace, then `>` (returns false) or `/>`
    /// (returns true). Attributes are refused.
    fn tag_end(&mut self, name: &str) -> Result<bool, XmlError> {
        self.skip_ws();
        match self.b.get(self.pos) {
            None => self.eof(),
            Some(b'>') => {
                self.pos += 1;
                Ok(false)
            }
            Some(b'/') => {
                if self.b.get(self.pos + 1) == Some(&b'>') {
                    self.pos += 2;
                    Ok(true)
                } else if self.pos + 1 >= self.b.len() {
                    self.eof()
                } else {
                    self.malformed("`/` not followed by `>`")
                }
            }
            Some(c) if c.is_ascii_alphabetic() || *c == b'_' => self.err(XmlErrorKind::Attribute {
                element: name.to_owned(),
            }),
            Some(_) => self.malformed("unexpected character in a start tag"),
        }
    }

    /// Reads `</name>` at `pos` (which points at `</`) and checks it closes `open`.
    fn end_tag(&mut self, open: &str) -> Result<(), XmlError> {
        let at = self.pos;
        // The common case, `</name>` exactly, is one comparison.
        let rest = &self.b[self.pos + 2..];
        if rest.len() > open.len() && rest.starts_with(open.as_bytes()) && rest[open.len()] == b'>' {
            self.pos += open.len() + 3;
            return Ok(());
        }
        self.pos += 2;
        let name = self.name()?;
        self.skip_ws();
        match self.b.get(self.pos) {
            None => return self.eof(),
            Some(b'>') => self.pos += 1,
            Some(_) => return self.malformed("unexpected character in an end tag"),
        }
        if name != open {
            return Err(XmlError::new(
                XmlErrorKind::MismatchedEndTag {
                    expected: open.to_owned(),
                    found: name.to_owned(),
                },
                at,
            ));
        }
        Ok(())
    }

    fn fields(&mut self, root: &str, out: &mut Fields<'a>) -> Result<(), XmlError> {
        loop {
            // Whitespace between fields is layout; any other text is refused.
            while let Some(c) = self.b.get(self.pos) {
                if *c == b'<' {
                    break;
                }
                if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                    if *c == b'&' {
                        // Check the reference first, so that `&xxe;` is reported as what it is.
                        let at = self.pos;
                        self.reference(&mut String::new())?;
                        self.pos = at;
                    }
                    return self.err(XmlErrorKind::TextOutsideField);
                }
                self.pos += 1;
            }
            if self.pos >= self.b.len() {
                return self.eof();
            }
            if self.starts_with(b"</") {
                return self.end_tag(root);
            }
            if self.starts_with(b"<!--") {
                self.comment()?;
                continue;
            }
            if self.starts_with(b"<!") {
                return self.markup_decl();
            }
            if self.starts_with(b"<?") {
                return self.err(XmlErrorKind::ProcessingInstruction);
            }
            let field_at = self.pos;
            self.pos += 1;
            let name = self.name()?;
            let empty = self.tag_end(name)?;
            let value = if empty { Cow::Borrowed("") } else { self.value(name)? };
            if out.len() >= self.opts.max_fields {
                return Err(XmlError::new(
                    XmlErrorKind::TooManyFields {
                        max: self.opts.max_fields,
                    },
                    field_at,
                ));
            }
            if !out.insert_new(Cow::Borrowed(name), value) {
                return Err(XmlError::new(
                    XmlErrorKind::DuplicateField { name: name.to_owned() },
                    field_at,
                ));
            }
        }
    }

    /// Reads a field's content up to and including its end tag. The value is borrowed from
    /// the body when it is a single run of text or one CDATA section needing no decoding.
    fn value(&mut self, name: &str) -> Result<Cow<'a, str>, XmlError> {
        let mut owned: Option<String> = None;
        let mut borrowed: Option<&'a str> = None;
        // Appends a decoded piece; the first piece is kept borrowed until a second arrives.
        fn push<'a>(owned: &mut Option<String>, borrowed: &mut Option<&'a str>, piece: &'a str) {
            if piece.is_empty() {
                return;
            }
            match (owned.as_mut(), borrowed.take()) {
                (Some(o), _) => o.push_str(piece),
                (None, None) => *borrowed = Some(piece),
                (None, Some(first)) => {
                    let mut o = String::with_capacity(first.len() + piece.len());
                    o.push_str(first);
                    o.push_str(piece);
                    *owned = Some(o);
                }
            }
        }
        fn make_owned<'a>(owned: &'a mut Option<String>, borrowed: &mut Option<&str>) -> &'a mut String {
            owned.get_or_insert_with(|| borrowed.take().map(str::to_owned).unwrap_or_default())
        }
        loop {
            let run_start = self.pos;
            // Scan plain text up to the next byte that needs attention.
            loop {
                self.pos += plain_run(&self.b[self.pos..], &CLASS);
                let Some(&c) = self.b.get(self.pos) else {
                    return self.eof();
                };
                match CLASS[usize::from(c)] {
                    C_BRACKET => {
                        if self.starts_with(b"]]>") {
                            return self.malformed("`]]>` in text");
                        }
                        self.pos += 1;
                    }
                    C_EF => {
                        self.check_ef()?;
                        self.pos += 3;
                    }
                    C_CONTROL => return self.invalid_char(),
                    _ => break,
                }
            }
            push(&mut owned, &mut borrowed, &self.s[run_start..self.pos]);
            match CLASS[usize::from(self.b[self.pos])] {
                C_CR => {
                    // XML normalises CR LF and a lone CR to LF in all content.
                    self.pos += 1;
                    if self.b.get(self.pos) == Some(&b'\n') {
                        self.pos += 1;
                    }
                    make_owned(&mut owned, &mut borrowed).push('\n');
                }
                C_AMP => {
                    let o = make_owned(&mut owned, &mut borrowed);
                    self.reference(o)?;
                }
                _ => {
                    // `<`: CDATA, a comment, the end tag, or something refused.
                    if self.starts_with(b"<![CDATA[") {
                        self.pos += 9;
                        self.cdata(&mut owned, &mut borrowed, push)?;
                    } else if self.starts_with(b"</") {
                        self.end_tag(name)?;
                        return Ok(match (owned, borrowed) {
                            (Some(o), _) => Cow::Owned(o),
                            (None, Some(b)) => Cow::Borrowed(b),
                            (None, None) => Cow::Borrowed(""),
                        });
                    } else if self.starts_with(b"<!--") {
                        self.comment()?;
                    } else if self.starts_with(b"<?") {
                        return self.err(XmlErrorKind::ProcessingInstruction);
                    } else if self.starts_with(b"<!") {
                        return self.markup_decl();
                    } else {
                        return self.err(XmlErrorKind::Nested { field: name.to_owned() });
                    }
                }
            }
        }
    }

    fn cdata(
        &mut self,
        owned: &mut Option<String>,
        borrowed: &mut Option<&'a str>,
        push: fn(&mut Option<String>, &mut Option<&'a str>, &'a str),
    ) -> Result<(), XmlError> {
        let mut run_start = self.pos;
        loop {
            self.pos += plain_run(&self.b[self.pos..], &CDATA_CLASS);
            let Some(&c) = self.b.get(self.pos) else {
                return self.eof();
            };
            match CDATA_CLASS[usize::from(c)] {
                C_BRACKET if self.starts_with(b"]]>") => {
                    push(owned, borrowed, &self.s[run_start..self.pos]);
                    self.pos += 3;
                    return Ok(());
                }
                C_CONTROL => return self.invalid_char(),
                C_EF => {
                    self.check_ef()?;
                    self.pos += 3;
                }
                C_CR => {
                    push(owned, borrowed, &self.s[run_start..self.pos]);
                    self.pos += 1;
                    if self.b.get(self.pos) == Some(&b'\n') {
                        self.pos += 1;
                    }
                    let o = owned.get_or_insert_with(|| borrowed.take().map(str::to_owned).unwrap_or_default());
                    o.push('\n');
                    run_start = self.pos;
                }
                _ => self.pos += 1,
            }
        }
    }

    /// Checks the three-byte sequence at `pos` (starting with 0xEF) is not U+FFFE or U+FFFF.
    fn check_ef(&self) -> Result<(), XmlError> {
        let b1 = self.b.get(self.pos + 1).copied();
        let b2 = self.b.get(self.pos + 2).copied();
        if b1 == Some(0xBF) && matches!(b2, Some(0xBE | 0xBF)) {
            let cp = if b2 == Some(0xBE) { 0xFFFE } else { 0xFFFF };
            return self.err(XmlErrorKind::InvalidChar { code_point: cp });
        }
        Ok(())
    }

    fn invalid_char<T>(&self) -> Result<T, XmlError> {
        self.err(XmlErrorKind::InvalidChar {
            code_point: u32::from(self.b[self.pos]),
        })
    }

    /// Checks that `start..end` holds only characters XML allows.
    fn check_chars(&self, start: usize, end: usize) -> Result<(), XmlError> {
        for (i, ch) in self.s[start..end].char_indices() {
            if !is_xml_char(ch) {
                return Err(XmlError::new(
                    XmlErrorKind::InvalidChar { code_point: ch as u32 },
                    start + i,
                ));
            }
        }
        Ok(())
    }

    /// Decodes a reference at `pos` (which points at `&`) into `out`.
    fn reference(&mut self, out: &mut String) -> Result<(), XmlError> {
        let at = self.pos;
        let rest = &self.s[self.pos + 1..];
        let Some(semi) = rest.bytes().take(40).position(|c| c == b';') else {
            if rest.len() < 40 && !rest.contains(['<', ' ']) {
                return self.eof();
            }
            return self.malformed("`&` that does not start a reference (write it as &amp;)");
        };
        let name = &rest[..semi];
        let ch = match name {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "apos" => '\'',
            "quot" => '"',
            _ if name.starts_with("#x") => parse_char_ref(&name[2..], 16).ok_or(XmlError::new(
                XmlErrorKind::Malformed {
                    what: "bad character reference",
                },
                at,
            ))?,
            _ if name.starts_with('#') => parse_char_ref(&name[1..], 10).ok_or(XmlError::new(
                XmlErrorKind::Malformed {
                    what: "bad character reference",
                },
                at,
            ))?,
            _ => {
                return Err(XmlError::new(
                    XmlErrorKind::EntityReference { name: name.to_owned() },
                    at,
                ));
            }
        };
        out.push(ch);
        self.pos += semi + 2;
        Ok(())
    }
}

fn parse_char_ref(digits: &str, radix: u32) -> Option<char> {
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let v = u32::from_str_radix(digits, radix).ok()?;
    char::from_u32(v).filter(|c| is_xml_char(*c))
}

/// Whether XML 1.0 allows the character at all.
pub(crate) fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
}

/// Writes fields as a flat APIv2 document, in the order given. The integer fields (amounts
/// in fen and counts: `total_fee`, `refund_fee_0`, `coupon_count`, ...) are written bare, the
/// way WeChat Pay writes them; every other value goes into CDATA, all-digit strings such as
/// `mch_id` or `transaction_id` included, as WeChat Pay's answers wrap them, with `]]>` split across two sections and carriage returns written as `&#13;` so
/// that every value reads back byte for byte.
///
/// # Errors
/// [`Error::Invalid`] for a field name that is not an XML name WeChat Pay could use, or a
/// value holding a character that XML 1.0 cannot carry (control characters other than tab,
/// line feed and carriage return).
pub fn write<'x>(root: &str, fields: impl IntoIterator<Item = (&'x str, &'x str)>) -> Result<String, Error> {
    let mut out = String::with_capacity(512);
    write_into(&mut out, root, fields)?;
    Ok(out)
}

/// Like [`write`], appending to `out`.
///
/// # Errors
/// As [`write`].
pub fn write_into<'x>(
    out: &mut String,
    root: &str,
    fields: impl IntoIterator<Item = (&'x str, &'x str)>,
) -> Result<(), Error> {
    out.push('<');
    out.push_str(root);
    out.push('>');
    for (name, value) in fields {
        check_name(name)?;
        out.push('<');
        out.push_str(name);
        out.push('>');
        write_value(out, name, value)?;
        out.push_str("</");
        out.push_str(name);
        out.push('>');
    }
    out.push_str("</");
    out.push_str(root);
    out.push('>');
    Ok(())
}

fn check_name(name: &str) -> Result<(), Error> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "field name",
            format!("{name:?} is not a field name WeChat Pay uses (ASCII letters, digits, `_`, `-`, `.`)"),
        ))
    }
}

/// Whether WeChat Pay types a field Int: its name, without `_0`-style indexes, ends in `_fee`
/// or `_count`, or it is `refundquery`'s `offset`. Every other field is a String, whatever
/// its characters.
fn is_int_field(name: &str) -> bool {
    let mut base = name;
    while let Some((head, tail)) = base.rsplit_once('_') {
        if !tail.is_empty() && tail.bytes().all(|c| c.is_ascii_digit()) {
            base = head;
        } else {
            break;
        }
    }
    base.ends_with("_fee") || base.ends_with("_count") || base == "offset"
}

fn write_value(out: &mut String, name: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Ok(());
    }
    if is_int_field(name) && value.bytes().all(|c| c.is_ascii_digit()) {
        out.push_str(value);
        return Ok(());
    }
    let mut in_cdata = false;
    let mut rest = value;
    while !rest.is_empty() {
        // Find the next piece that cannot sit inside CDATA as is.
        let mut cut = rest.len();
        for (i, c) in rest.char_indices() {
            if c == '\r' || !is_xml_char(c) || rest[i..].starts_with("]]>") {
                cut = i;
                break;
            }
        }
        if cut > 0 {
            if !in_cdata {
                out.push_str("<![CDATA[");
                in_cdata = true;
            }
            out.push_str(&rest[..cut]);
            rest = &rest[cut..];
            continue;
        }
        let c = rest.chars().next().unwrap_or('\0');
        if c == '\r' {
            if in_cdata {
                out.push_str("]]>");
                in_cdata = false;
            }
            out.push_str("&#13;");
            rest = &rest[1..];
        } else if rest.starts_with("]]>") {
            // `]]` stays in this section, `>` opens the next one.
            if !in_cdata {
                out.push_str("<![CDATA[");
            }
            out.push_str("]]]]><![CDATA[>");
            in_cdata = true;
            rest = &rest[3..];
        } else {
            return Err(Error::invalid(
                "field value",
                format!("field `{name}` contains U+{:04X}, which XML cannot carry", c as u32),
            ));
        }
    }
    if in_cdata {
        out.push_str("]]>");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(body: &str) -> XmlErrorKind {
        read(body.as_bytes()).unwrap_err().kind
    }

    #[test]
    fn reads_text_and_cdata_values_the_same_way() {
        let f = read(b"<xml><a><![CDATA[x<y]]></a><b>x&lt;y</b><c>1</c><d/><e></e></xml>").unwrap();
        assert_eq!(f.get("a"), Some("x<y"));
        assert_eq!(f.get("b"), Some("x<y"));
        assert_eq!(f.get("c"), Some("1"));
        assert_eq!(f.get("d"), Some(""));
        assert_eq!(f.get("e"), Some(""));
    }

    #[test]
    fn accepts_the_declaration_whitespace_comments_and_a_bom() {
        let body =
            "\u{FEFF}<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- hi -->\n<xml>\n  <a>1</a> <!-- c -->\n</xml>\n";
        let f = read(body.as_bytes()).unwrap();
        assert_eq!(f.get("a"), Some("1"));
    }

    #[test]
    fn refuses_what_a_flat_document_cannot_contain() {
        assert_eq!(
            kind("<xml><a x=\"1\">1</a></xml>"),
            XmlErrorKind::Attribute { element: "a".into() }
        );
        assert_eq!(
            kind("<?xml version=\"1.0\"?><?pi x?><xml/>"),
            XmlErrorKind::ProcessingInstruction
        );
        assert_eq!(kind("<xml><a><?pi?></a></xml>"), XmlErrorKind::ProcessingInstruction);
        assert_eq!(
            kind("<xml><a>&foo;</a></xml>"),
            XmlErrorKind::EntityReference { name: "foo".into() }
        );
        assert_eq!(kind("<xml>text</xml>"), XmlErrorKind::TextOutsideField);
        assert_eq!(kind("<xml><![CDATA[x]]></xml>"), XmlErrorKind::TextOutsideField);
        assert_eq!(
            kind("<xml><a>1</b></xml>"),
            XmlErrorKind::MismatchedEndTag {
                expected: "a".into(),
                found: "b".into()
            }
        );
        assert_eq!(kind("<xml></xml><xml></xml>"), XmlErrorKind::TrailingContent);
        assert_eq!(
            kind("<xml><a>\u{1}</a></xml>"),
            XmlErrorKind::InvalidChar { code_point: 1 }
        );
        assert_eq!(
            kind("<xml><a>\u{FFFF}</a></xml>"),
            XmlErrorKind::InvalidChar { code_point: 0xFFFF }
        );
        assert_eq!(kind("   "), XmlErrorKind::Empty);
        assert_eq!(
            kind("<?xml version=\"1.0\" encoding=\"GBK\"?><xml/>"),
            XmlErrorKind::EncodingNotUtf8 { declared: "GBK".into() }
        );
        assert_eq!(
            kind("<xml><a>]]></a></xml>"),
            XmlErrorKind::Malformed { what: "`]]>` in text" }
        );
    }

    #[test]
    fn refuses_oversized_bodies_before_reading_them() {
        let opts = ReadOptions {
            max_len: 10,
            ..ReadOptions::default()
        };
        let err = read_with(b"<xml><a>12345</a></xml>", &opts).unwrap_err();
        assert_eq!(err.kind, XmlErrorKind::TooLarge { len: 23, max: 10 });
    }

    #[test]
    fn normalises_line_ends_and_decodes_character_references() {
        let f = read(b"<xml><a>x\r\ny\rz</a><b>&#x4E2D;&#25991;</b><c><![CDATA[p\r\nq]]></c></xml>").unwrap();
        assert_eq!(f.get("a"), Some("x\ny\nz"));
        assert_eq!(f.get("b"), Some("中文"));
        assert_eq!(f.get("c"), Some("p\nq"));
    }

    #[test]
    fn writer_round_trips_awkward_values() {
        for v in [
            "]]>", "a]]>b]]>", "x\r\ny", "\r", "<&>\"'", "中文", "]]", "]", "12", "", " ",
        ] {
            let xml = write("xml", [("v", v)]).unwrap();
            let f = read(xml.as_bytes()).unwrap();
            assert_eq!(f.get("v"), Some(v), "{v:?} via {xml}");
        }
        assert!(write("xml", [("v", "\u{1}")]).is_err());
        assert!(write("xml", [("1v", "x")]).is_err());
    }

    #[test]
    fn integer_fields_are_written_bare_and_all_digit_strings_in_cdata() {
        let xml = write(
            "xml",
            [
                ("mch_id", "1230000109"),
                ("total_fee", "100"),
                ("refund_fee_0", "5"),
                ("coupon_refund_fee_0_1", "2"),
                ("coupon_count", "1"),
                ("transaction_id", "4200000000"),
                ("fee_type", "CNY"),
                ("refund_fee_x", "7"),
                ("offset", "10"),
            ],
        )
        .unwrap();
        assert_eq!(
            xml,
            "<xml><mch_id><![CDATA[1230000109]]></mch_id><total_fee>100</total_fee>\
             <refund_fee_0>5</refund_fee_0><coupon_refund_fee_0_1>2</coupon_refund_fee_0_1>\
             <coupon_count>1</coupon_count><transaction_id><![CDATA[4200000000]]></transaction_id>\
             <fee_type><![CDATA[CNY]]></fee_type><refund_fee_x><![CDATA[7]]></refund_fee_x>\
             <offset>10</offset></xml>"
        );
    }

    /// The error's kind and where it points.
    fn error(body: &[u8]) -> (XmlErrorKind, usize) {
        let e = read(body).unwrap_err();
        (e.kind, e.offset)
    }

    // The tests below were written for mutants that `scripts/mutants.sh` found surviving:
    // each pins a path of the reader no other test reached.

    #[test]
    fn a_body_of_exactly_the_limit_is_read_and_one_byte_more_is_refused() {
        let body = b"<xml><a>1</a></xml>";
        let at = |max_len| ReadOptions {
            max_len,
            ..ReadOptions::default()
        };
        assert!(read_with(body, &at(body.len())).is_ok());
        let e = read_with(body, &at(body.len() - 1)).unwrap_err();
        assert_eq!(
            e.kind,
            XmlErrorKind::TooLarge {
                len: body.len(),
                max: body.len() - 1
            }
        );
    }

    #[test]
    fn every_spelling_of_a_declaration_is_refused_as_a_doctype_wherever_it_stands() {
        for body in [
            "<!doctype xml><xml/>",
            "<!ENTITY a \"b\"><xml/>",
            "<xml/><!ENTITY a \"b\">",
            "<xml/><!doctype xml>",
            "<xml><!ENTITY a \"b\"></xml>",
            "<xml><a><!DOCTYPE x></a></xml>",
        ] {
            assert_eq!(kind(body), XmlErrorKind::Doctype, "{body}");
        }
        assert!(matches!(kind("<xml/><!FOO>"), XmlErrorKind::Malformed { .. }));
    }

    #[test]
    fn a_declaration_after_a_byte_order_mark_is_still_checked_for_its_encoding() {
        assert_eq!(
            kind("\u{FEFF}<?xml version=\"1.0\" encoding=\"GBK\"?><xml/>"),
            XmlErrorKind::EncodingNotUtf8 { declared: "GBK".into() }
        );
        assert!(read("\u{FEFF}<?xml version=\"1.0\" encoding=\"UTF-8\"?><xml><a>1</a></xml>".as_bytes()).is_ok());
        // The encoding first, right after `<?xml`: it is read from there.
        assert_eq!(
            kind("\u{FEFF}<?xml encoding=\"GBK\"?><xml/>"),
            XmlErrorKind::EncodingNotUtf8 { declared: "GBK".into() }
        );
    }

    #[test]
    fn element_names_must_start_with_a_letter_or_underscore_and_errors_point_at_the_tag() {
        assert!(matches!(kind("<xml><1a>x</1a></xml>"), XmlErrorKind::Malformed { .. }));
        assert!(matches!(kind("<xml><-a>x</-a></xml>"), XmlErrorKind::Malformed { .. }));
        assert_eq!(read(b"<xml><_a>x</_a></xml>").unwrap().get("_a"), Some("x"));
        // A DOCTYPE or processing instruction where a name should be: the error points at `<`.
        assert_eq!(error(b"<!DOCTYPE"), (XmlErrorKind::Doctype, 0));
        assert_eq!(error(b"<xml><!DOCTYPE x></xml>"), (XmlErrorKind::Doctype, 5));
        assert_eq!(error(b"<xml><?pi?></xml>"), (XmlErrorKind::ProcessingInstruction, 5));
        // The same inside an end tag, where only the name reader sees them: the error points
        // at the character before.
        assert_eq!(error(b"<xml><a>1</?a>"), (XmlErrorKind::ProcessingInstruction, 10));
        assert_eq!(error(b"<xml><a>1</!DOCTYPE a>"), (XmlErrorKind::Doctype, 10));
        assert!(matches!(kind("<xml><a>1</!a>"), XmlErrorKind::Malformed { .. }));
    }

    #[test]
    fn start_tags_end_in_gt_or_slash_gt_and_attributes_are_named_as_such() {
        assert_eq!(error(b"<xml><a/"), (XmlErrorKind::UnexpectedEof, 8));
        assert!(matches!(kind("<xml><a/x></xml>"), XmlErrorKind::Malformed { .. }));
        assert!(matches!(kind("<xml><a %>1</a></xml>"), XmlErrorKind::Malformed { .. }));
        assert_eq!(
            kind("<xml><a _x=\"1\">1</a></xml>"),
            XmlErrorKind::Attribute { element: "a".into() }
        );
        let f = read(b"<xml><a />\n<b\t>2</b ></xml >").unwrap();
        assert_eq!((f.get("a"), f.get("b")), (Some(""), Some("2")));
    }

    #[test]
    fn end_tags_with_whitespace_close_their_element_and_the_document_ends_there() {
        let f = read(b"<xml><a>1</a  ><b>2</b\n></xml\t>  ").unwrap();
        assert_eq!((f.get("a"), f.get("b")), (Some("1"), Some("2")));
        assert_eq!(kind("<xml><a>1</a ></xml >x"), XmlErrorKind::TrailingContent);
        assert_eq!(
            error(b"<xml><a>1</a x>").0,
            XmlErrorKind::Malformed {
                what: "unexpected character in an end tag"
            }
        );
        assert_eq!(error(b"<xml><a>1</a "), (XmlErrorKind::UnexpectedEof, 13));
    }

    #[test]
    fn brackets_and_three_byte_characters_in_text_are_kept_as_they_are() {
        let f = read("<xml><a>x]y]</a><b>全角ｘ￮</b><c>]]</c></xml>".as_bytes()).unwrap();
        assert_eq!(f.get("a"), Some("x]y]"));
        assert_eq!(f.get("b"), Some("全角ｘ￮"));
        assert_eq!(f.get("c"), Some("]]"));
    }

    #[test]
    fn cdata_refuses_control_characters_and_noncharacters_and_keeps_the_rest() {
        assert_eq!(
            error(b"<xml><a><![CDATA[x\x01]]></a></xml>"),
            (XmlErrorKind::InvalidChar { code_point: 1 }, 18)
        );
        assert_eq!(
            error("<xml><a><![CDATA[x\u{FFFE}]]></a></xml>".as_bytes()),
            (XmlErrorKind::InvalidChar { code_point: 0xFFFE }, 18)
        );
        let f = read("<xml><a><![CDATA[ｘ]y]]></a></xml>".as_bytes()).unwrap();
        assert_eq!(f.get("a"), Some("ｘ]y"));
    }

    #[test]
    fn comments_may_not_hide_characters_xml_forbids() {
        assert_eq!(
            error(b"<xml><!-- ok \x02 --><a>1</a></xml>"),
            (XmlErrorKind::InvalidChar { code_point: 2 }, 13)
        );
        assert_eq!(
            error(b"<!-- \x03 --><xml/>"),
            (XmlErrorKind::InvalidChar { code_point: 3 }, 5)
        );
        assert_eq!(
            read(b"<xml><!-- \xe4\xb8\xad --><a>1</a></xml>").unwrap().get("a"),
            Some("1")
        );
    }

    #[test]
    fn the_five_predefined_entities_decode_and_every_other_ampersand_is_refused() {
        let f = read(b"<xml><a>&lt;&gt;&amp;&apos;&quot;</a></xml>").unwrap();
        assert_eq!(f.get("a"), Some("<>&'\""));
        // A reference cut off by the end of the body: more was to come.
        assert_eq!(error(b"<xml><a>x&am"), (XmlErrorKind::UnexpectedEof, 12));
        // An `&` that starts no reference: a space or a tag follows, or no `;` within 40.
        for body in [
            "<xml><a>x & y</a></xml>".to_owned(),
            "<xml><a>&am</a></xml>".to_owned(),
            format!("<xml><a>&{}", "a".repeat(40)),
            format!("<xml><a>&{};</a></xml>", "a".repeat(45)),
        ] {
            assert!(matches!(kind(&body), XmlErrorKind::Malformed { .. }), "{body}");
        }
    }

    #[test]
    fn character_references_take_at_most_eight_digits() {
        let f = read(b"<xml><a>&#x00000041;&#00000066;</a></xml>").unwrap();
        assert_eq!(f.get("a"), Some("AB"));
        for body in [
            "<xml><a>&#x000000041;</a></xml>",
            "<xml><a>&#000000066;</a></xml>",
            "<xml><a>&#x;</a></xml>",
            "<xml><a>&#;</a></xml>",
        ] {
            assert!(matches!(kind(body), XmlErrorKind::Malformed { .. }), "{body}");
        }
    }
}
