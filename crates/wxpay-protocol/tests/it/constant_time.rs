//! Reliability checklist item 14: signatures are compared in constant time, and nothing
//! can compare them otherwise without this test failing.
//!
//! Two gates: `Signature` has no `PartialEq` (so `==` on one does not compile; checked here
//! at compile time), and no source file of the workspace compares a value named like a
//! signature with `==`, `!=`, `.eq()`, `.ne()`, `assert_eq!` or `assert_ne!` outside test
//! code (a comparison of the strings behind it would stop at the first difference). The
//! sources are read as syntax trees, so a comparison split over lines or inside a macro's
//! arguments is seen like any other.

use std::path::{Path, PathBuf};

use wxpay_protocol::sign::Signature;

/// `IsEq::<T>::EQ` is true exactly when `T: PartialEq`: an inherent constant (which needs
/// the bound) is found before the trait's (which does not).
struct IsEq<T>(std::marker::PhantomData<T>);

trait NotEq {
    const EQ: bool = false;
}

impl<T> NotEq for IsEq<T> {}

impl<T: PartialEq> IsEq<T> {
    #[allow(dead_code)]
    const EQ: bool = true;
}

// Checked when this test compiles: Signature must not implement PartialEq, and the check
// itself tells the two apart.
const _: () = assert!(!IsEq::<Signature>::EQ);
const _: () = assert!(IsEq::<String>::EQ);

/// Whether an identifier names a signature: `sign`, `sig`, `pay_sign`, `received_sig`,
/// `signature`… but not `sign_type`, `sign_name`, `signer` or a type (`NotifyBadSignature`).
fn names_a_signature(ident: &str) -> bool {
    if ident.chars().any(|c| c.is_ascii_uppercase()) {
        return false;
    }
    matches!(ident, "sign" | "sig" | "paysign")
        || ident.ends_with("_sign")
        || ident.ends_with("_sig")
        || ident.contains("signature")
}

/// Methods whose result says nothing about a signature's bytes: comparing it leaks nothing.
const HARMLESS_METHODS: [&str; 7] = ["len", "is_empty", "is_some", "is_none", "is_ok", "is_err", "sign_type"];

/// Whether an expression is a signature or made of one: `pay_sign`, `body.sign`,
/// `&received_sig[..]`, `sign(&fields, &key)`, `pay_sign.as_str()`, `Some(sig)`; not
/// `sig.len()` or `sign_type`.
fn is_signature(e: &syn::Expr) -> bool {
    use syn::Expr;
    match e {
        Expr::Path(p) => p
            .path
            .segments
            .last()
            .is_some_and(|s| names_a_signature(&s.ident.to_string())),
        Expr::Field(f) => match &f.member {
            syn::Member::Named(name) if names_a_signature(&name.to_string()) => true,
            _ => is_signature(&f.base),
        },
        // Made from a signature: `pay_sign.as_str()`, `STANDARD.encode(&sig)`.
        Expr::MethodCall(m) => {
            let method = m.method.to_string();
            !HARMLESS_METHODS.contains(&method.as_str())
                && (names_a_signature(&method) || is_signature(&m.receiver) || m.args.iter().any(is_signature))
        }
        // A function that makes a signature or is given one (`hex::encode(sig)`), or a
        // variant holding one (`Some(sig)`).
        Expr::Call(c) => is_signature(&c.func) || c.args.iter().any(is_signature),
        Expr::Macro(m) => m.mac.path.is_ident("format") && mentions_a_signature(&m.mac.tokens),
        Expr::Reference(r) => is_signature(&r.expr),
        Expr::Unary(u) => is_signature(&u.expr),
        Expr::Paren(p) => is_signature(&p.expr),
        Expr::Group(g) => is_signature(&g.expr),
        Expr::Index(i) => is_signature(&i.expr),
        Expr::Cast(c) => is_signature(&c.expr),
        Expr::Try(t) => is_signature(&t.expr),
        _ => false,
    }
}

/// Whether a macro's tokens name a signature anywhere (`format!("{sig}")`).
fn mentions_a_signature(tokens: &proc_macro2::TokenStream) -> bool {
    tokens.clone().into_iter().any(|t| match t {
        proc_macro2::TokenTree::Ident(i) => names_a_signature(&i.to_string()),
        proc_macro2::TokenTree::Literal(l) => {
            // Inline arguments of a format string: `{sig}`, `{pay_sign:?}`.
            let text = l.to_string();
            text.split('{')
                .skip(1)
                .any(|a| names_a_signature(a.split(['}', ':']).next().unwrap_or_default()))
        }
        proc_macro2::TokenTree::Group(g) => mentions_a_signature(&g.stream()),
        proc_macro2::TokenTree::Punct(_) => false,
    })
}

/// Whether an item is test code (`#[test]`, `#[tokio::test]`, `#[cfg(test)]`), where a
/// known-answer signature is compared with `assert_eq!` and timing does not matter.
fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| match &a.meta {
        // `cfg(test)` and `cfg(all(test, …))`, not `cfg(not(test))`.
        syn::Meta::List(list) if list.path.is_ident("cfg") => {
            let tokens = list.tokens.to_string();
            tokens == "test" || (tokens.starts_with("all (") && tokens.contains("test") && !tokens.contains("not"))
        }
        meta => meta.path().segments.last().is_some_and(|s| s.ident == "test"),
    })
}

/// Walks a source file and keeps the lines where a signature is compared with `==`, `!=`,
/// `.eq()`, `.ne()`, `assert_eq!` or `assert_ne!`, outside test code.
#[derive(Default)]
struct Gate {
    lines: Vec<usize>,
}

impl Gate {
    fn found(&mut self, at: &impl syn::spanned::Spanned) {
        self.lines.push(at.span().start().line);
    }
}

impl<'a> syn::visit::Visit<'a> for Gate {
    fn visit_item_fn(&mut self, f: &'a syn::ItemFn) {
        if !is_test(&f.attrs) {
            syn::visit::visit_item_fn(self, f);
        }
    }

    fn visit_impl_item_fn(&mut self, f: &'a syn::ImplItemFn) {
        if !is_test(&f.attrs) {
            syn::visit::visit_impl_item_fn(self, f);
        }
    }

    fn visit_item_mod(&mut self, m: &'a syn::ItemMod) {
        if !is_test(&m.attrs) {
            syn::visit::visit_item_mod(self, m);
        }
    }

    fn visit_expr_binary(&mut self, b: &'a syn::ExprBinary) {
        if matches!(b.op, syn::BinOp::Eq(_) | syn::BinOp::Ne(_)) && (is_signature(&b.left) || is_signature(&b.right)) {
            self.found(b);
        }
        syn::visit::visit_expr_binary(self, b);
    }

    fn visit_expr_method_call(&mut self, m: &'a syn::ExprMethodCall) {
        if (m.method == "eq" || m.method == "ne") && (is_signature(&m.receiver) || m.args.iter().any(is_signature)) {
            self.found(m);
        }
        syn::visit::visit_expr_method_call(self, m);
    }

    /// A macro's arguments are tokens to syn; those that read as expressions (`assert!`,
    /// `assert_eq!`, `format!`…) are walked like code.
    fn visit_macro(&mut self, mac: &'a syn::Macro) {
        use syn::parse::Parser;
        let parser = syn::punctuated::Punctuated::<syn::Expr, syn::Token![,]>::parse_terminated;
        let Ok(args) = parser.parse2(mac.tokens.clone()) else {
            return;
        };
        let name = mac
            .path
            .segments
            .last()
            .map(|s| s.ident.to_string())
            .unwrap_or_default();
        if (name.ends_with("assert_eq") || name.ends_with("assert_ne")) && args.iter().take(2).any(is_signature) {
            self.found(mac);
        }
        for arg in &args {
            self.visit_expr(arg);
        }
    }
}

/// The lines of a Rust source file that compare a signature other than in constant time.
fn comparisons_of_signatures(source: &str) -> Vec<usize> {
    let file = syn::parse_file(source).unwrap_or_else(|e| panic!("the source parses: {e}\n{source}"));
    let mut gate = Gate::default();
    syn::visit::Visit::visit_file(&mut gate, &file);
    gate.lines
}

/// Whether a statement, in a function of its own, compares a signature.
fn compares_a_signature(statement: &str) -> bool {
    !comparisons_of_signatures(&format!("fn f() {{\n{statement}\n}}")).is_empty()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_gate_finds_comparisons_of_signatures() {
    for bad in [
        "let ok = received_sign == expected;",
        "return sig != other;",
        "let ok = pay_sign.as_str() == body.sign;",
        "assert!(signature == x);",
        "assert_eq!(pay_sign, computed);",
        "debug_assert_ne!(computed, body.sign);",
        "let ok = received.sign.eq(&computed);",
        "let ok = computed.ne(&expected_sig);",
        "let ok = body.sign[..] == computed[..];",
        "let ok = sign(&fields, &key)\n    .to_uppercase()\n    == received;",
        "if Some(sig) == other {}",
        "let ok = &*received_sig == computed.as_bytes();",
        "let ok = items.iter().any(|s| s.signature == x);",
        "let ok = hex::encode(sig) == expected;",
        "let ok = STANDARD.encode(&received_sig) == header;",
        "let ok = format!(\"{sig}\") == header;",
    ] {
        assert!(compares_a_signature(bad), "{bad}");
    }
    for fine in [
        "let ok = sign_type == SignType::Md5;",
        "let signer = x == y;",
        "let ok = signed.matches(&received);",
        "// a comment: sign == x is what we must never write",
        "let n = signatures.len();",
        "let ok = sig.len() == 64;",
        "let ok = sig.signature.is_empty() && status == 401;",
        "let key = if kind == Some(FaultKind::NotifyBadSignature) { 1 } else { 2 };",
        "let ok = fields.iter().any(|(k, _)| k == \"paySign\");",
        "let s = format!(\"{sign}\");",
    ] {
        assert!(!compares_a_signature(fine), "{fine}");
    }
    // Test code compares known answers as it likes.
    let tests = "#[cfg(test)]\nmod tests {\n    fn t() { assert_eq!(sign, \"ABC\"); }\n}\n\
                 #[test]\nfn u() { assert!(sig == \"ABC\"); }\n\
                 #[tokio::test]\nasync fn v() { assert_eq!(pay_sign, x); }\n";
    assert_eq!(comparisons_of_signatures(tests), Vec::<usize>::new());
    // Code left out of tests is not test code.
    let production = "#[cfg(not(test))]\nfn f() {\n    let _ = sig == header;\n}\n";
    assert_eq!(comparisons_of_signatures(production), [3]);
    // And the line is the comparison's.
    assert_eq!(
        comparisons_of_signatures("fn f() {\n    let a = 1;\n    a == sig\n}\n"),
        [3]
    );
}

#[test]
fn no_source_compares_a_signature_with_eq() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for krate in std::fs::read_dir(&crates).unwrap().flatten() {
        let src = krate.path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    assert!(files.len() > 50, "the workspace's sources were found: {}", files.len());
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for n in comparisons_of_signatures(&text) {
            found.push(format!("{}:{n}: {}", file.display(), lines[n - 1].trim()));
        }
    }
    assert!(
        found.is_empty(),
        "compare signatures with Signature::matches or subtle's ct_eq:\n{}",
        found.join("\n")
    );
}
