//! The entry format: the checksum is CRC32C, headers round-trip and refuse every damage, the
//! block table has one CRC per block.

use super::*;

/// The checksum is CRC32C exactly (entries written by earlier builds, with the `crc32c`
/// crate, stay valid): the standard check value, and agreement with `crc32c` at every size
/// that changes code paths, in one piece and split anywhere.
#[test]
fn the_checksum_is_crc32c() {
    assert_eq!(Checksum::of(b"123456789"), 0xe306_9283);
    let data: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for len in (0..1100).chain([4095, 4096, 4097, 65_536, 262_145, 300_000]) {
        let bytes = &data[..len];
        let expected = crc32c::crc32c(bytes);
        assert_eq!(Checksum::of(bytes), expected, "{len} bytes");
        for at in [0, 1, 7, 63, 64, 65, 255, 256, len / 2, len.saturating_sub(1), len] {
            let at = at.min(len);
            let mut c = Checksum::default();
            c.update(&bytes[..at]);
            c.update(&bytes[at..]);
            assert_eq!(c.value(), expected, "{len} bytes split at {at}");
        }
    }
}

#[test]
fn round_trip() {
    let h = Header {
        len: 12345,
        crc: 0xdead_beef,
        key: Key::digest(b"k"),
    };
    assert_eq!(Header::decode(&h.encode()), Ok(h));
    for layout in [Layout::Leading, Layout::Trailing] {
        let fh = Header::decode_as(&h.encode_as(layout, BLOCK_SHIFT), layout).unwrap();
        assert_eq!((fh.header, fh.block_shift), (h, BLOCK_SHIFT));
        // A version-1 header is not an entry file's, nor the reverse.
        assert_eq!(
            Header::decode_as(&h.encode(), layout),
            Err(HeaderError::UnknownVersion(1))
        );
    }
    assert_eq!(
        Header::decode(&h.encode_as(Layout::Leading, BLOCK_SHIFT)),
        Err(HeaderError::UnknownVersion(2))
    );
    for shift in [MIN_BLOCK_SHIFT - 1, MAX_BLOCK_SHIFT + 1] {
        assert_eq!(
            Header::decode_as(&h.encode_as(Layout::Leading, shift), Layout::Leading),
            Err(HeaderError::BadBlockSize(shift))
        );
    }
}

#[test]
fn every_single_byte_flip_of_the_header_is_refused() {
    let h = Header {
        len: 77,
        crc: Checksum::of(b"content"),
        key: Key::digest(b"k"),
    };
    let encodings = [
        (h.encode(), None),
        (h.encode_as(Layout::Leading, BLOCK_SHIFT), Some(Layout::Leading)),
        (h.encode_as(Layout::Trailing, BLOCK_SHIFT), Some(Layout::Trailing)),
    ];
    for (good, layout) in encodings {
        let decode = |b: &[u8; HEADER_LEN]| match layout {
            None => Header::decode(b).is_ok(),
            Some(layout) => Header::decode_as(b, layout).is_ok(),
        };
        assert!(decode(&good));
        for i in 0..HEADER_LEN {
            for bit in 0..8 {
                let mut bad = good;
                bad[i] ^= 1 << bit;
                assert!(!decode(&bad), "{layout:?}: flip of bit {bit} in byte {i} accepted");
            }
            let mut bad = good;
            bad[i] = bad[i].wrapping_add(0x5a);
            assert!(!decode(&bad), "{layout:?}: change of byte {i} accepted");
        }
    }
}

/// The table has one CRC per block, the last block short, whatever pieces the content comes
/// in; and an entry file is header, content, table (or content, table, header).
#[test]
fn the_block_table_is_one_crc_per_block() {
    let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let shift = MIN_BLOCK_SHIFT;
    let block = 1usize << shift;
    for len in [0, 1, block - 1, block, block + 1, 3 * block, data.len()] {
        let content = &data[..len];
        let expected: Vec<u8> = content
            .chunks(block)
            .flat_map(|b| Checksum::of(b).to_le_bytes())
            .collect();
        for piece in [1, 7, block - 1, block, block + 3, 4096] {
            let mut t = BlockTable::new(shift);
            for p in content.chunks(piece) {
                t.update(p);
            }
            let (table, crc) = t.finish();
            assert_eq!(table, expected, "len {len}, pieces of {piece}");
            assert_eq!(crc, Checksum::of(&expected));
        }
        assert_eq!(table_len(len as u64, shift), expected.len() as u64);
        let key = Key::digest(b"k");
        let file = encode_file(key, content, Layout::Leading, shift);
        assert_eq!(file.len() as u64, file_len(len as u64, shift).unwrap());
        assert_eq!(&file[HEADER_LEN..HEADER_LEN + len], content);
        assert_eq!(&file[HEADER_LEN + len..], &expected[..]);
        let fh = Header::decode_as(file[..HEADER_LEN].try_into().unwrap(), Layout::Leading).unwrap();
        assert_eq!(
            (fh.header.len, fh.header.crc, fh.block_shift),
            (len as u64, Checksum::of(&expected), shift)
        );
    }
}

#[test]
fn incremental_checksum_matches_whole() {
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let mut c = Checksum::default();
    for chunk in data.chunks(333) {
        c.update(chunk);
    }
    assert_eq!(c.value(), Checksum::of(&data));
}
