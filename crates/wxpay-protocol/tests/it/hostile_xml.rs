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
fn the_xxe_sample_is_refused_at_its_doctype() {
    let body = std::fs::read(vectors_dir().join("xml/xxe-file.xml")).unwrap();
    let err = xml::read(&body).unwrap_err();
    assert!(matches!(err.kind, XmlErrorKind::Doctype), "{err}");
    assert_eq!(err.offset, body.windows(9).position(|w| w == b"<!DOCTYPE").unwrap());
}

#[test]
fn an_external_entity_never_shows_the_file_it_names() {
    // A file of the test's own, with a secret no other path could produce, so that the check
    // does not depend on what the machine happens to have in /etc.
    let dir = std::env::temp_dir().join(format!("wxpay-xxe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = format!("canary-{}-{:?}", std::process::id(), std::time::SystemTime::now());
    let file = dir.join("secret.txt");
    std::fs::write(&file, &secret).unwrap();
    let body = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE xml [<!ENTITY s SYSTEM \"file://{}\">]>\
         <xml><out_trade_no>&s;</out_trade_no><total_fee>1</total_fee></xml>",
        file.display()
    );
    let err = xml::read(body.as_bytes()).unwrap_err();
    assert!(matches!(err.kind, XmlErrorKind::Doctype), "{err}");
    let shown = format!("{err} {err:?}");
    let notification = PaymentNotification::parse(body.as_bytes(), &merchant(SignType::Md5));
    let shown = format!("{shown} {notification:?}");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!shown.contains(&secret), "{shown}");
    assert!(notification.is_err());
}
