//! Every hostile sample in `testdata/vectors/xml` is refused, with the right kind of error,
//! by the reader and by the notification parser.

use wxpay_protocol::v2::PaymentNotification;
use wxpay_protocol::xml::{self, XmlErrorKind};
use wxpay_protocol::{Error, SignType};

use crate::support::{merchant, vectors_dir};

fn expected(file: &str) -> fn(&XmlErrorKind) -> bool {
    match file {
        "xxe-file.xml" | "xxe-http.xml" | "billion-laughs.xml" => |k| matches!(k, XmlErrorKind::Doctype),
        "duplicate-field.xml" => |k| matches!(k, XmlErrorKind::DuplicateField { name } if name == "total_fee"),
        "non-utf8.xml" => |k| matches!(k, XmlErrorKind::NotUtf8),
        "truncated.xml" => |k| matches!(k, XmlErrorKind::UnexpectedEof),
        "nested.xml" => |k| matches!(k, XmlErrorKind::Nested { field } if field == "out_trade_no"),
        "wrong-root.xml" => |k| matches!(k, XmlErrorKind::WrongRoot { found, .. } if found == "root"),
        other => panic!("no expectation for the hostile sample {other}: add one"),
    }
}

#[test]
fn every_hostile_sample_is_refused_with_the_right_error() {
    let dir = vectors_dir().join("xml");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("xml") {
            continue;
        }
        let file = path.file_name().unwrap().to_str().unwrap().to_owned();
        let body = std::fs::read(&path).unwrap();
        let err = xml::read(&body).expect_err(&file);
        assert!(expected(&file)(&err.kind), "{file}: refused with {:?}", err.kind);
        // The message says what it was, for the log line.
        assert!(!err.to_string().is_empty());
        // The notification parser refuses it the same way, before any signature check.
        match PaymentNotification::parse(&body, &merchant(SignType::Md5)) {
            Err(Error::Xml(e)) => assert_eq!(e, err, "{file}"),
            other => panic!("{file}: the notification parser gave {other:?}"),
        }
        seen += 1;
    }
    assert_eq!(seen, 8, "every sample in {} was checked", dir.display());
}

#[test]
fn the_xxe_sample_never_shows_the_file_it_names() {
    let body = std::fs::read(vectors_dir().join("xml/xxe-file.xml")).unwrap();
    let err = xml::read(&body).unwrap_err();
    let hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let shown = err.to_string();
    assert!(
        hostname.trim().is_empty() || !shown.contains(hostname.trim()),
        "{shown}"
    );
    assert_eq!(err.offset, body.windows(9).position(|w| w == b"<!DOCTYPE").unwrap());
}
