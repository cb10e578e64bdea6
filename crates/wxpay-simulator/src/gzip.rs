//! A bill asked for with `tar_type=GZIP`, compressed as WeChat Pay sends it: a real deflate
//! stream, several times smaller than the text, so that a client's download of a large bill
//! is as long here as live and its gunzip meets the compressed blocks it will meet there.

use std::io::Write as _;

/// `data` as a gzip file.
pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 4 + 32), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    e.write_all(data).expect("writing into memory");
    e.finish().expect("writing into memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bill_is_compressed_and_unpacks_to_itself() {
        let bill = "`2026-12-03 12:00:00,`wxd678efh567hg6787,`1230000109,`0.60%\r\n".repeat(1000);
        let g = gzip(bill.as_bytes());
        assert_eq!(&g[..3], &[0x1F, 0x8B, 8]);
        assert!(g.len() * 10 < bill.len(), "{} bytes for {}", g.len(), bill.len());
        assert_eq!(wxpay_protocol::v2::gunzip(&g).unwrap(), bill.as_bytes());
        assert_eq!(wxpay_protocol::v2::gunzip(&gzip(b"")).unwrap(), b"");
    }
}
