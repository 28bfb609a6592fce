//! Plain POSIX USTAR headers from the `tar` crate, with everything but the
//! name, kind, mode and size fixed: mtime 0, uid/gid 0 with empty user and
//! group names, no PAX records, no GNU extensions, no xattrs. Directory names
//! are written without a trailing `/` (the entry type says what they are).

use crate::ImageError;

/// The size of a TAR block.
pub const BLOCK: usize = 512;
/// Two zero blocks end an archive.
pub const END: [u8; 2 * BLOCK] = [0; 2 * BLOCK];
/// The largest entry a USTAR size field carries (11 octal digits).
pub const MAX_SIZE: u64 = 0o77777777777;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// The header of one entry. `name` is relative (no leading `/`, no `..`),
/// `/`-separated; names longer than 100 bytes are split into USTAR's prefix.
pub fn header(name: &str, kind: Kind, mode: u32, size: u64) -> Result<[u8; BLOCK], ImageError> {
    if size > MAX_SIZE {
        return Err(ImageError::Path(format!("{name}: {size} bytes is more than a USTAR entry can hold")));
    }
    let invalid = |e: std::io::Error| ImageError::Path(format!("{name:?} cannot be a plain USTAR entry: {e}"));
    let mut h = tar::Header::new_ustar();
    h.set_path(name.trim_end_matches('/')).map_err(invalid)?;
    h.set_entry_type(match kind {
        Kind::File => tar::EntryType::Regular,
        Kind::Dir => tar::EntryType::Directory,
    });
    h.set_mode(mode & 0o7777);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h.set_device_major(0).map_err(invalid)?;
    h.set_device_minor(0).map_err(invalid)?;
    h.set_cksum();
    Ok(*h.as_bytes())
}

/// Zero bytes that pad an entry of `size` bytes to a whole block.
pub fn padding(size: u64) -> usize {
    (BLOCK - (size % BLOCK as u64) as usize) % BLOCK
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn archive(entries: &[(&str, Kind, u32, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, mode, data) in entries {
            out.extend_from_slice(&header(name, *kind, *mode, data.len() as u64).unwrap());
            out.extend_from_slice(data);
            out.extend(std::iter::repeat_n(0, padding(data.len() as u64)));
        }
        out.extend_from_slice(&END);
        out
    }

    #[test]
    fn the_tar_crate_reads_what_we_write() {
        let long_dir = format!("{}/{}", "d".repeat(90), "e".repeat(60));
        let long_file = format!("{long_dir}/{}", "f".repeat(99));
        let bytes = archive(&[
            ("usr", Kind::Dir, 0o755, b""),
            ("usr/bin/hello", Kind::File, 0o755, b"#!/bin/sh\necho hi\n"),
            (&long_dir, Kind::Dir, 0o755, b""),
            (&long_file, Kind::File, 0o644, b"x"),
        ]);
        let mut a = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header().clone();
            assert!(h.as_ustar().is_some(), "a plain ustar header");
            assert_eq!((h.mtime().unwrap(), h.uid().unwrap(), h.gid().unwrap()), (0, 0, 0));
            assert_eq!(h.username().unwrap(), Some(""));
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            seen.push((e.path().unwrap().to_string_lossy().into_owned(), h.mode().unwrap(), data));
        }
        assert_eq!(seen[0], ("usr".into(), 0o755, vec![]));
        assert_eq!(seen[1], ("usr/bin/hello".into(), 0o755, b"#!/bin/sh\necho hi\n".to_vec()));
        assert_eq!(seen[2].0, long_dir);
        assert_eq!(seen[3], (long_file, 0o644, b"x".to_vec()));
    }

    #[test]
    fn names_that_do_not_fit_are_refused() {
        assert!(header(&"a".repeat(101), Kind::File, 0o644, 0).is_err());
        assert!(header(&format!("{}/{}", "a".repeat(156), "b"), Kind::File, 0o644, 0).is_err());
        assert!(header("a", Kind::File, 0o644, MAX_SIZE + 1).is_err());
        assert!(header("a", Kind::File, 0o644, MAX_SIZE).is_ok());
        assert!(header("../a", Kind::File, 0o644, 0).is_err(), "no way out of the layer");
        assert!(header("/etc/a", Kind::File, 0o644, 0).is_err(), "relative names only");
    }

    #[test]
    fn padding_fills_to_a_block() {
        assert_eq!(padding(0), 0);
        assert_eq!(padding(1), 511);
        assert_eq!(padding(512), 0);
        assert_eq!(padding(513), 511);
    }
}
