//! Plain POSIX USTAR headers, written byte by byte so that nothing but the
//! name, kind, mode and size can vary: mtime 0, uid/gid 0 with empty user
//! and group names, no PAX records, no GNU extensions, no xattrs.

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

/// The header of one entry. `name` is relative (no leading `/`), `/`-separated;
/// a directory's name is written with a trailing `/`.
pub fn header(name: &str, kind: Kind, mode: u32, size: u64) -> Result<[u8; BLOCK], ImageError> {
    let full = match kind {
        Kind::File => name.to_owned(),
        Kind::Dir => format!("{}/", name.trim_end_matches('/')),
    };
    if size > MAX_SIZE {
        return Err(ImageError::Path(format!("{name}: {size} bytes is more than a USTAR entry can hold")));
    }
    let (prefix, rest) =
        split_name(&full).ok_or_else(|| ImageError::Path(format!("{name:?} is too long for a plain USTAR header")))?;
    let mut h = [0u8; BLOCK];
    h[..rest.len()].copy_from_slice(rest.as_bytes());
    octal(&mut h[100..108], u64::from(mode & 0o7777));
    octal(&mut h[108..116], 0); // uid
    octal(&mut h[116..124], 0); // gid
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0); // mtime
    h[156] = match kind {
        Kind::File => b'0',
        Kind::Dir => b'5',
    };
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], 0); // devmajor
    octal(&mut h[337..345], 0); // devminor
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    // The checksum is summed with its own field as spaces, then written as
    // six octal digits, a NUL and a space.
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    octal(&mut h[148..155], sum);
    h[155] = b' ';
    Ok(h)
}

/// Zero bytes that pad an entry of `size` bytes to a whole block.
pub fn padding(size: u64) -> usize {
    (BLOCK - (size % BLOCK as u64) as usize) % BLOCK
}

/// Split a name into USTAR's prefix (at most 155 bytes) and name (at most
/// 100) at a `/`; `None` when no split fits.
fn split_name(full: &str) -> Option<(&str, &str)> {
    if full.len() <= 100 {
        return Some(("", full));
    }
    // The name part may keep a directory's trailing '/'; split before it.
    let searchable = full.strip_suffix('/').unwrap_or(full);
    searchable
        .match_indices('/')
        .map(|(i, _)| (&full[..i], &full[i + 1..]))
        .find(|(prefix, rest)| prefix.len() <= 155 && rest.len() <= 100 && !rest.is_empty())
}

/// Write `value` as zero-padded octal filling all but the last byte of
/// `field`, which is NUL.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
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
        assert_eq!(seen[0], ("usr/".into(), 0o755, vec![]));
        assert_eq!(seen[1], ("usr/bin/hello".into(), 0o755, b"#!/bin/sh\necho hi\n".to_vec()));
        assert_eq!(seen[2].0, format!("{long_dir}/"));
        assert_eq!(seen[3], (long_file, 0o644, b"x".to_vec()));
    }

    #[test]
    fn names_that_do_not_fit_are_refused() {
        assert!(header(&"a".repeat(101), Kind::File, 0o644, 0).is_err());
        assert!(header(&format!("{}/{}", "a".repeat(156), "b"), Kind::File, 0o644, 0).is_err());
        assert!(header("a", Kind::File, 0o644, MAX_SIZE + 1).is_err());
        assert!(header("a", Kind::File, 0o644, MAX_SIZE).is_ok());
    }

    #[test]
    fn padding_fills_to_a_block() {
        assert_eq!(padding(0), 0);
        assert_eq!(padding(1), 511);
        assert_eq!(padding(512), 0);
        assert_eq!(padding(513), 511);
    }
}
