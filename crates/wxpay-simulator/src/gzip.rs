//! A gzip stream (RFC 1952) of stored deflate blocks (RFC 1951 §3.2.4), for bills asked for
//! with `tar_type=GZIP`. Stored blocks do not compress, but any gunzip reads them: what a
//! client must get right is that the bytes are gzip, and that is what this reproduces,
//! without a compression library for a test server.

/// The CRC-32 (IEEE 802.3, reflected) of `data`, as gzip's trailer carries it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// `data` as a gzip file.
pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    const MAX_BLOCK: usize = 65_535;
    let blocks = data.len().div_ceil(MAX_BLOCK).max(1);
    let mut out = Vec::with_capacity(data.len() + blocks * 5 + 18);
    // Magic, deflate, no flags, no time, no extra flags, unknown OS.
    out.extend_from_slice(&[0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 255]);
    let mut chunks = data.chunks(MAX_BLOCK).peekable();
    if chunks.peek().is_none() {
        // An empty file is one empty final block.
        out.extend_from_slice(&[1, 0, 0, 0xFF, 0xFF]);
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let len = chunk.len() as u16;
        out.push(u8::from(last));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crc_is_the_standard_one() {
        // The check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn a_gzip_stream_has_its_header_blocks_and_trailer() {
        let g = gzip(b"abc");
        assert_eq!(&g[..3], &[0x1F, 0x8B, 8]);
        assert_eq!(&g[10..15], &[1, 3, 0, 0xFC, 0xFF]);
        assert_eq!(&g[15..18], b"abc");
        assert_eq!(g.len(), 10 + 5 + 3 + 8);
        // Two blocks past 64 KiB, the first not final.
        let big = vec![b'x'; 70_000];
        let g = gzip(&big);
        assert_eq!(g[10], 0);
        assert_eq!(g[10 + 5 + 65_535], 1);
        assert_eq!(g.len(), 10 + 2 * 5 + 70_000 + 8);
        assert_eq!(gzip(b"").len(), 10 + 5 + 8);
    }
}
