//! Snapshot files: a versioned, checksummed image of an index, written atomically.
//!
//! Layout (little-endian): `b"CAPIFIDX"`, `u32` version, `u64` payload length, payload,
//! `u32` CRC-32 of version, length and payload. The payload holds the priority list, the
//! remediation and origin names, caller metadata, then each decision as family byte, network,
//! prefix length, origin, remediation and expiry. Reading checks every field before use, so a
//! damaged file gives [`Error::Snapshot`], never a panic or a half-built index.

use crate::error::{Error, Result};
use crate::index::{Index, Op, Stored};
use crate::parse::Net;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

const MAGIC: &[u8; 8] = b"CAPIFIDX";
/// Format version written by this build.
pub const VERSION: u32 = 1;

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Serialises the decisions active at `now` (plus caller metadata) into snapshot bytes.
pub fn encode(ix: &Index, now: u64, metadata: &[u8]) -> Vec<u8> {
    let decisions: Vec<Stored> = ix.decisions().into_iter().filter(|d| d.exp > now).collect();
    let mut p = Vec::with_capacity(64 + decisions.len() * 16 + metadata.len());
    for names in [ix.priorities(), ix.remediations(), ix.origins()] {
        p.extend_from_slice(&(names.len() as u32).to_le_bytes());
        names.iter().for_each(|n| put_str(&mut p, n));
    }
    p.extend_from_slice(&(metadata.len() as u32).to_le_bytes());
    p.extend_from_slice(metadata);
    p.extend_from_slice(&(decisions.len() as u64).to_le_bytes());
    for d in &decisions {
        match d.net {
            Net::V4(k, l) => {
                p.push(4);
                p.extend_from_slice(&k.to_be_bytes());
                p.push(l);
            }
            Net::V6(k, l) => {
                p.push(6);
                p.extend_from_slice(&k.to_be_bytes());
                p.push(l);
            }
        }
        p.extend_from_slice(&d.origin.to_le_bytes());
        p.push(d.remediation);
        p.extend_from_slice(&d.exp.to_le_bytes());
    }
    let mut out = Vec::with_capacity(p.len() + 24);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(p.len() as u64).to_le_bytes());
    out.extend_from_slice(&p);
    let crc = crc32fast::hash(&out[8..]);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn corrupt(why: &str) -> Error {
    Error::Snapshot(format!("corrupt snapshot: {why}"))
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or_else(|| corrupt("truncated"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn count(&mut self, min_item: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item) > self.buf.len() - self.pos {
            return Err(corrupt("count larger than the file"));
        }
        Ok(n)
    }
    fn string(&mut self) -> Result<String> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| corrupt("name is not UTF-8"))
    }
    fn names(&mut self) -> Result<Vec<String>> {
        let n = self.count(4)?;
        (0..n).map(|_| self.string()).collect()
    }
}

/// Rebuilds an index from snapshot bytes; returns it with the caller metadata.
pub fn decode(buf: &[u8]) -> Result<(Index, Vec<u8>)> {
    if buf.len() < 24 || &buf[..8] != MAGIC {
        return Err(Error::Snapshot("not a capi_fast snapshot (bad magic or too short)".into()));
    }
    let mut r = Reader { buf, pos: 8 };
    let version = r.u32()?;
    if version != VERSION {
        return Err(Error::Snapshot(format!("snapshot format version {version}; this build reads {VERSION}")));
    }
    let len = r.u64()?;
    if len != (buf.len() - 24) as u64 {
        return Err(corrupt("truncated or padded (payload length mismatch)"));
    }
    let body_end = buf.len() - 4;
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&buf[body_end..]);
    if crc32fast::hash(&buf[8..body_end]) != u32::from_le_bytes(crc) {
        return Err(corrupt("checksum mismatch"));
    }
    let mut r = Reader { buf: &buf[..body_end], pos: 20 };
    let priorities = r.names()?;
    let remediations = r.names()?;
    let origins = r.names()?;
    let mlen = r.u32()? as usize;
    let metadata = r.take(mlen)?.to_vec();
    let n = r.u64()?;
    if n.saturating_mul(15) > (r.buf.len() - r.pos) as u64 {
        return Err(corrupt("decision count larger than the file"));
    }
    let mut ix = Index::new(&priorities).map_err(|e| corrupt(&e.to_string()))?;
    let mut tags = std::collections::HashMap::new();
    let mut ops = Vec::with_capacity(n as usize);
    let mut v4_hosts = 0;
    for _ in 0..n {
        let net = match r.u8()? {
            4 => {
                let k = u32::from_be_bytes(r.arr()?);
                let l = r.u8()?;
                if l > 32 || k & <u32 as crate::bits::Bits>::mask(l) != k {
                    return Err(corrupt("bad IPv4 network"));
                }
                v4_hosts += usize::from(l == 32);
                Net::V4(k, l)
            }
            6 => {
                let k = u128::from_be_bytes(r.arr()?);
                let l = r.u8()?;
                if l > 128 || k & <u128 as crate::bits::Bits>::mask(l) != k {
                    return Err(corrupt("bad IPv6 network"));
                }
                Net::V6(k, l)
            }
            _ => return Err(corrupt("bad address family")),
        };
        let o = r.u32()? as usize;
        let m = r.u8()? as usize;
        let exp = r.u64()?;
        let (Some(origin), Some(rem)) = (origins.get(o), remediations.get(m)) else {
            return Err(corrupt("decision names an unknown origin or remediation"));
        };
        let tag = match tags.get(&(o, m)) {
            Some(&t) => t,
            None => {
                let t = ix.tag(origin, rem).map_err(|e| corrupt(&e.to_string()))?;
                tags.insert((o, m), t);
                t
            }
        };
        ops.push(Op::Add(net, tag, exp.min(crate::slot::NEVER)));
    }
    if r.pos != r.buf.len() {
        return Err(corrupt("trailing bytes"));
    }
    ix.reserve_v4_hosts(v4_hosts);
    ix.apply(&ops);
    Ok((ix, metadata))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename,
/// fsync of the directory. Readers see the old file or the new one, never a mix. The file is
/// 0600 (its owner only), as every file the package writes.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "snapshot path names no file"))?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(".{}.{}.{nanos}.tmp", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        // Like the Python package's `files.write_atomic`: a new file only its owner can read.
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
