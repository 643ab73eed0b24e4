//! `capi_fast._native.DecisionIndex` and `BatchResult`.

use super::breathe::{list_of, Breather};
use super::convert::{addr_text, clock, expiry, ms, name_text, opt_f64, text, text_of, to_py};
use super::export::{self, ExportBlocks};
use super::stream::ParsedStream;
use crate::aggregate;
use crate::batch::{AddItem, Batch, Outcome, RemoveItem};
use crate::error::Error;
use crate::index::{AddRule, Index};
use crate::parse::{parse_addr, parse_net, Addr};
use crate::shared::Shared;
use crate::slot::NEVER;
use crate::snapshot;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The outcome of a batch.
#[pyclass(frozen, get_all, module = "capi_fast._native")]
#[derive(Debug, Clone, Default)]
pub struct BatchResult {
    /// Decisions that were not held before.
    pub added: usize,
    /// Decisions already held whose expiry was replaced (or, from a stream, kept or extended).
    pub refreshed: usize,
    /// Decisions removed (including ones re-added already expired).
    pub removed: usize,
    /// Items skipped because they were malformed (only when `strict=False`).
    pub skipped: usize,
    /// Networks whose host bits were cleared.
    pub normalized: usize,
}

impl From<Outcome> for BatchResult {
    fn from(o: Outcome) -> Self {
        BatchResult {
            added: o.added,
            refreshed: o.refreshed,
            removed: o.removed,
            skipped: o.skipped,
            normalized: o.normalized,
        }
    }
}

#[pymethods]
impl BatchResult {
    fn __repr__(&self) -> String {
        format!(
            "BatchResult(added={}, refreshed={}, removed={}, skipped={}, normalized={})",
            self.added, self.refreshed, self.removed, self.skipped, self.normalized
        )
    }
}

/// A thread-safe index of CrowdSec decisions answering "which remediation for this IP?".
#[pyclass(frozen, module = "capi_fast._native", name = "DecisionIndex")]
pub struct PyDecisionIndex {
    pub(crate) inner: Shared,
    /// Interned remediation names by id, filled on first use (ids are never reassigned).
    names: Box<[OnceLock<Py<PyString>>]>,
}

impl PyDecisionIndex {
    pub(crate) fn wrap(ix: Index) -> PyDecisionIndex {
        let names = (0..crate::index::MAX_REMEDIATIONS).map(|_| OnceLock::new()).collect();
        PyDecisionIndex { inner: Shared::new(ix), names }
    }

    fn name(&self, py: Python<'_>, rem: u8) -> Py<PyString> {
        let cell = &self.names[rem as usize];
        if let Some(n) = cell.get() {
            return n.clone_ref(py);
        }
        let name = self.inner.read().remediations()[rem as usize].clone();
        cell.get_or_init(|| PyString::intern(py, &name).unbind()).clone_ref(py)
    }

    fn lookup_addr(&self, py: Python<'_>, addr: Addr, now: u64) -> Option<Py<PyString>> {
        let rem = self.inner.read().lookup(addr, now)?;
        Some(self.name(py, rem))
    }

    /// Applies `batch` at `now` (ms) without the GIL; its vectors (tens of MB for a million
    /// items) are freed there too.
    fn run_batch(&self, py: Python<'_>, batch: Batch, now: u64, strict: bool) -> PyResult<BatchResult> {
        let size = batch.size();
        let out = py.detach(move || self.inner.write(size, move |ix| batch.apply(ix, now, strict)));
        out.map(BatchResult::from).map_err(|e| to_py(py, e))
    }

    #[allow(clippy::too_many_arguments)]
    fn parse_add(
        &self,
        item: &Bound<'_, PyAny>,
        remediation: &str,
        ttl: Option<f64>,
        origin: &str,
        now: f64,
        batch: &mut Batch,
    ) -> PyResult<Result<AddItem, Error>> {
        if let Ok(s) = item.cast::<PyString>() {
            let exp = expiry(now, ttl)?;
            return Ok(addr_text(s).and_then(parse_net).map(|(net, normalized)| AddItem {
                net,
                normalized,
                pair: batch.pair(origin, remediation),
                exp,
                rule: AddRule::Replace,
            }));
        }
        let Ok(t) = item.cast::<PyTuple>() else {
            return Err(PyTypeError::new_err("an add item must be a str or a tuple"));
        };
        if t.is_empty() || t.len() > 4 {
            return Err(PyTypeError::new_err("an add item is (value, remediation, ttl, origin) or a prefix of it"));
        }
        let value = text(&t.get_item(0)?, "value")?;
        let rem = if t.len() > 1 { Some(text(&t.get_item(1)?, "remediation")?) } else { None };
        let ttl = if t.len() > 2 { opt_f64(Some(t.get_item(2)?))? } else { ttl };
        let org = if t.len() > 3 { Some(text(&t.get_item(3)?, "origin")?) } else { None };
        let exp = expiry(now, ttl)?;
        let rem = match rem.as_ref().map(|r| name_text(r)) {
            Some(Ok(r)) => r,
            Some(Err(e)) => return Ok(Err(e)),
            None => remediation,
        };
        let org = match org.as_ref().map(|o| name_text(o)) {
            Some(Ok(o)) => o,
            Some(Err(e)) => return Ok(Err(e)),
            None => origin,
        };
        Ok(addr_text(&value).and_then(parse_net).map(|(net, normalized)| AddItem {
            net,
            normalized,
            pair: batch.pair(org, rem),
            exp,
            rule: AddRule::Replace,
        }))
    }
}

#[pymethods]
impl PyDecisionIndex {
    #[new]
    #[pyo3(signature = (priorities = vec!["ban".to_owned(), "captcha".to_owned()]))]
    fn new(py: Python<'_>, priorities: Vec<String>) -> PyResult<Self> {
        Ok(Self::wrap(Index::new(&priorities).map_err(|e| to_py(py, e))?))
    }

    /// Adds a decision, or replaces the expiry of the same (value, origin, remediation).
    #[pyo3(signature = (value, remediation = "ban", *, ttl = None, origin = "manual", now = None))]
    fn add(
        &self,
        py: Python<'_>,
        value: &Bound<'_, PyAny>,
        remediation: &str,
        ttl: Option<Bound<'_, PyAny>>,
        origin: &str,
        now: Option<f64>,
    ) -> PyResult<bool> {
        let now = clock(now)?;
        let ttl = opt_f64(ttl)?;
        let mut batch = Batch::default();
        let item = self.parse_add(value, remediation, ttl, origin, now, &mut batch)?.map_err(|e| to_py(py, e))?;
        batch.adds.push(item);
        let r = self.run_batch(py, batch, ms(now), true)?;
        Ok(r.added == 1)
    }

    /// Adds many decisions in one atomic batch.
    #[pyo3(signature = (items, remediation = "ban", *, ttl = None, origin = "manual", now = None, strict = true))]
    #[allow(clippy::too_many_arguments)]
    fn add_many(
        &self,
        py: Python<'_>,
        items: &Bound<'_, PyAny>,
        remediation: &str,
        ttl: Option<Bound<'_, PyAny>>,
        origin: &str,
        now: Option<f64>,
        strict: bool,
    ) -> PyResult<BatchResult> {
        self.apply(py, Some(items), None, remediation, ttl, origin, now, strict, None, None, None)
    }

    /// Applies removals then additions as one atomic batch.
    #[pyo3(signature = (add = None, remove = None, *, remediation = "ban", ttl = None, origin = "manual", now = None, strict = true, stream = None, fallback = None, stream_types = None))]
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        py: Python<'_>,
        add: Option<&Bound<'_, PyAny>>,
        remove: Option<&Bound<'_, PyAny>>,
        remediation: &str,
        ttl: Option<Bound<'_, PyAny>>,
        origin: &str,
        now: Option<f64>,
        strict: bool,
        stream: Option<PyRef<'_, ParsedStream>>,
        fallback: Option<&str>,
        stream_types: Option<Vec<String>>,
    ) -> PyResult<BatchResult> {
        if stream_types.is_some() && fallback.is_none() {
            // Without a fallback every type is kept as is: stream_types would silently do nothing.
            return Err(PyValueError::new_err("stream_types needs fallback= (what the other types become)"));
        }
        let now = clock(now)?;
        let ttl = opt_f64(ttl)?;
        let mut batch = Batch::default();
        if let Some(s) = &stream {
            let kept = match stream_types {
                Some(t) => t,
                None => self.inner.read().priorities().to_vec(),
            };
            // Plain Rust data: converted without the GIL (a million items take tens of ms).
            let ops = &s.ops;
            py.detach(|| batch.extend_from_stream(ops, &kept, fallback, now));
        }
        if let Some(items) = add {
            if let Ok(n) = items.len() {
                batch.adds.reserve(n);
            }
            let mut breather = Breather::default();
            for item in items.try_iter()? {
                match self.parse_add(&item?, remediation, ttl, origin, now, &mut batch)? {
                    Ok(a) => batch.adds.push(a),
                    Err(e) if strict => return Err(to_py(py, e)),
                    Err(_) => batch.skipped += 1,
                }
                breather.tick(py)?;
            }
        }
        if let Some(items) = remove {
            let mut breather = Breather::default();
            for item in items.try_iter()? {
                breather.tick(py)?;
                let item = item?;
                let (value, o, r): (Bound<'_, PyString>, Option<String>, Option<String>) =
                    if let Ok(s) = item.cast::<PyString>() {
                        (s.clone(), None, None)
                    } else if let Ok(t) = item.cast::<PyTuple>() {
                        if t.is_empty() || t.len() > 3 {
                            return Err(PyTypeError::new_err(
                                "a remove item is (value, origin, remediation) or a prefix of it",
                            ));
                        }
                        let opt = |i: usize| -> PyResult<Option<String>> {
                            if t.len() <= i || t.get_item(i)?.is_none() {
                                return Ok(None);
                            }
                            Ok(Some(text(&t.get_item(i)?, "filter")?.to_str()?.to_owned()))
                        };
                        (text(&t.get_item(0)?, "value")?, opt(1)?, opt(2)?)
                    } else {
                        return Err(PyTypeError::new_err("a remove item must be a str or a tuple"));
                    };
                match addr_text(&value).and_then(parse_net) {
                    Ok((net, _)) => batch.removes.push(RemoveItem { net, origin: o, remediation: r }),
                    Err(e) if strict => return Err(to_py(py, e)),
                    Err(_) => batch.skipped += 1,
                }
            }
        }
        self.run_batch(py, batch, ms(now), strict)
    }

    /// Removes the decisions on exactly `value`, optionally only one origin or remediation.
    #[pyo3(signature = (value, origin = None, remediation = None))]
    fn remove(
        &self,
        py: Python<'_>,
        value: &Bound<'_, PyAny>,
        origin: Option<String>,
        remediation: Option<String>,
    ) -> PyResult<usize> {
        let (net, _) = addr_text(&text(value, "value")?).and_then(parse_net).map_err(|e| to_py(py, e))?;
        let mut batch = Batch::default();
        batch.removes.push(RemoveItem { net, origin, remediation });
        Ok(self.run_batch(py, batch, 0, true)?.removed)
    }

    /// The remediation for `ip` at `now`, or None.
    #[pyo3(signature = (ip, now = None))]
    fn lookup(&self, py: Python<'_>, ip: &Bound<'_, PyAny>, now: Option<f64>) -> PyResult<Option<Py<PyString>>> {
        let addr = addr_text(text_of(ip, "ip")?).and_then(parse_addr).map_err(|e| to_py(py, e))?;
        Ok(self.lookup_addr(py, addr, ms(clock(now)?)))
    }

    /// Looks up many addresses: a list of str gives a list; a bytes-like buffer of packed
    /// addresses (4 bytes each for `family=4`, 16 for `family=6`) gives bytes of codes.
    #[pyo3(signature = (ips, *, family = None, now = None))]
    fn lookup_many<'py>(
        &self,
        py: Python<'py>,
        ips: &Bound<'py, PyAny>,
        family: Option<u8>,
        now: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let now = ms(clock(now)?);
        if let Ok(b) = ips.cast::<PyBytes>() {
            return self.lookup_packed(py, b.as_bytes(), family, now);
        }
        if let Ok(buf) = PyBuffer::<u8>::get(ips) {
            let data = buf.to_vec(py)?;
            return self.lookup_packed(py, &data, family, now);
        }
        if family.is_some() {
            return Err(PyTypeError::new_err(
                "family= applies to a packed buffer; pass bytes, bytearray or memoryview",
            ));
        }
        let mut addrs = Vec::new();
        if let Ok(n) = ips.len() {
            addrs.reserve(n);
        }
        let mut breather = Breather::default();
        for ip in ips.try_iter()? {
            let ip = ip?;
            addrs.push(addr_text(&text(&ip, "ip")?).and_then(parse_addr).map_err(|e| to_py(py, e))?);
            breather.tick(py)?;
        }
        let ix = self.inner.snapshot();
        let codes: Vec<u8> = py.detach(|| ix.codes(&addrs, now));
        let names: Vec<Option<Py<PyString>>> =
            (0..=ix.remediations().len()).map(|c| (c > 0).then(|| self.name(py, (c - 1) as u8))).collect();
        let out = list_of(py, codes.iter().map(|&c| names[c as usize].as_ref().map(|n| n.clone_ref(py))))?;
        Ok(out.into_any())
    }

    /// Removes every decision expired at `now`; returns how many.
    #[pyo3(signature = (now = None))]
    fn purge_expired(&self, py: Python<'_>, now: Option<f64>) -> PyResult<usize> {
        let now = ms(clock(now)?);
        Ok(py.detach(|| self.inner.purge(now)))
    }

    fn __len__(&self) -> usize {
        self.inner.read().len()
    }

    fn __contains__(&self, py: Python<'_>, ip: &Bound<'_, PyAny>) -> PyResult<bool> {
        Ok(self.lookup(py, ip, None)?.is_some())
    }

    fn __repr__(&self) -> String {
        let ix = self.inner.read();
        let (h4, r4, h6, r6) = ix.shape();
        format!(
            "DecisionIndex({} decisions; IPv4 {h4} addresses, {r4} ranges; IPv6 {h6} addresses, {r6} ranges)",
            ix.len()
        )
    }

    /// Counts and memory of the index.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let ix = self.inner.snapshot();
        let (h4, r4, h6, r6) = ix.shape();
        let d = PyDict::new(py);
        d.set_item("decisions", ix.len())?;
        d.set_item("ipv4_addresses", h4)?;
        d.set_item("ipv4_ranges", r4)?;
        d.set_item("ipv6_addresses", h6)?;
        d.set_item("ipv6_ranges", r6)?;
        d.set_item("normalized", ix.normalized())?;
        d.set_item("remediations", ix.remediations().to_vec())?;
        d.set_item("origins", ix.origins().len())?;
        d.set_item("memory_bytes", ix.heap_bytes())?;
        Ok(d)
    }

    /// Remediation names by code (code 0 is None), for `lookup_many` on packed buffers.
    #[getter]
    fn codes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let names = self.inner.read().remediations().to_vec();
        let mut v: Vec<Option<String>> = vec![None];
        v.extend(names.into_iter().map(Some));
        PyTuple::new(py, v)
    }

    /// The remediation priority list, most severe first.
    #[getter]
    fn priorities(&self) -> Vec<String> {
        self.inner.read().priorities().to_vec()
    }

    /// Writes the decisions active at `now` to `path` atomically.
    #[pyo3(signature = (path, *, metadata = None, now = None))]
    fn save(&self, py: Python<'_>, path: PathBuf, metadata: Option<Vec<u8>>, now: Option<f64>) -> PyResult<()> {
        let now = ms(clock(now)?);
        let ix = self.inner.snapshot();
        let meta = metadata.unwrap_or_default();
        py.detach(|| snapshot::write_atomic(&path, &snapshot::encode(&ix, now, &meta)))?;
        Ok(())
    }

    /// Writes the active decisions in the mapped layout (`MappedIndex` answers from it in
    /// place), atomically, mode 0600.
    #[pyo3(signature = (path, metadata = None, now = None))]
    fn save_mapped(&self, py: Python<'_>, path: PathBuf, metadata: Option<Vec<u8>>, now: Option<f64>) -> PyResult<()> {
        let now = ms(clock(now)?);
        let ix = self.inner.snapshot();
        let meta = metadata.unwrap_or_default();
        py.detach(|| snapshot::write_atomic(&path, &crate::mapped::encode(&ix, now, &meta)))?;
        Ok(())
    }

    /// Loads an index written by `save`.
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<PyDecisionIndex> {
        Ok(Self::load_with_metadata(py, path)?.0)
    }

    /// Loads an index written by `save`, with the metadata saved beside it.
    #[staticmethod]
    fn load_with_metadata(py: Python<'_>, path: PathBuf) -> PyResult<(PyDecisionIndex, Py<PyBytes>)> {
        let bytes = py.detach(|| std::fs::read(&path))?;
        let (ix, meta) = py
            .detach(|| {
                // The mapped layout (`save_mapped`) reads back whole too.
                if crate::mapped::is_mapped(&bytes) {
                    // Read whole anyway: the checksum costs little more, and a writer must not
                    // start from damaged decisions and save them again under a good one.
                    let layout = crate::mapped::Layout::open(bytes.as_slice())?;
                    if !crate::mapped::verify(bytes.as_slice(), &layout) {
                        return Err(Error::Snapshot("corrupt mapped snapshot: checksum mismatch".into()));
                    }
                    layout.to_index(bytes.as_slice())
                } else {
                    snapshot::decode(&bytes)
                }
            })
            .map_err(|e| {
                let m = format!("{}: {e}", path.display());
                to_py(py, Error::Snapshot(m))
            })?;
        Ok((Self::wrap(ix), PyBytes::new(py, &meta).unbind()))
    }

    /// Active decisions at `now` by (origin, remediation), as usage metrics' `active_decisions`.
    #[pyo3(signature = (now = None))]
    fn active_counts<'py>(&self, py: Python<'py>, now: Option<f64>) -> PyResult<Bound<'py, PyDict>> {
        let now = ms(clock(now)?);
        let ix = self.inner.snapshot();
        let by_tag = py.detach(|| ix.active_by_tag(now));
        let out = PyDict::new(py);
        // A tag is one (origin, remediation) pair: each key is set once.
        for (tag, &n) in by_tag.iter().enumerate().filter(|&(_, &n)| n > 0) {
            let (origin, rem) = ix.tag_parts(tag as u16);
            out.set_item((ix.origins()[origin as usize].as_str(), ix.remediations()[rem as usize].as_str()), n)?;
        }
        Ok(out)
    }

    /// The fewest CIDRs covering exactly the addresses whose answer is `remediation` at `now`.
    #[pyo3(signature = (remediation = "ban", family = 4, now = None))]
    fn export_cidrs<'py>(
        &self,
        py: Python<'py>,
        remediation: &str,
        family: u8,
        now: Option<f64>,
    ) -> PyResult<Bound<'py, PyList>> {
        let blocks = self.export_blocks(py, remediation, family, now)?;
        list_of(py, blocks.iter().map(|b| export::cidr(family, b)).collect::<Vec<_>>())
    }

    /// `export_cidrs` with when each CIDR stops answering `remediation` (Unix seconds; None: never).
    #[pyo3(signature = (remediation = "ban", family = 4, now = None))]
    fn export_until<'py>(
        &self,
        py: Python<'py>,
        remediation: &str,
        family: u8,
        now: Option<f64>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let blocks = self.export_blocks(py, remediation, family, now)?;
        export::dict_of(py, family, blocks.iter())
    }

    /// The export now, and what changed since `previous` (an earlier result's first item):
    /// `(blocks, added, deleted)`, added and deleted as CIDR -> end (new and old). Without
    /// `until`, ends are all None and only CIDRs count.
    #[pyo3(signature = (remediation = "ban", family = 4, now = None, previous = None, until = true))]
    #[allow(clippy::type_complexity)]
    fn export_changes<'py>(
        &self,
        py: Python<'py>,
        remediation: &str,
        family: u8,
        now: Option<f64>,
        previous: Option<PyRef<'py, ExportBlocks>>,
        until: bool,
    ) -> PyResult<(ExportBlocks, Bound<'py, PyDict>, Bound<'py, PyDict>)> {
        if let Some(p) = &previous {
            if p.family != family {
                return Err(PyValueError::new_err(format!(
                    "previous is an export of family {}, not {family}",
                    p.family
                )));
            }
        }
        let mut blocks = self.export_blocks(py, remediation, family, now)?;
        if !until {
            blocks.iter_mut().for_each(|b| b.2 = NEVER);
        }
        let old: &[aggregate::Block] = previous.as_ref().map_or(&[], |p| &p.blocks);
        let (add, delete) = py.detach(|| aggregate::changes(old, &blocks));
        let added = export::dict_of(py, family, add.into_iter())?;
        let deleted = export::dict_of(py, family, delete.into_iter())?;
        Ok((ExportBlocks { family, blocks }, added, deleted))
    }
}

impl PyDecisionIndex {
    /// The blocks answering `remediation` at `now` (see [`aggregate`]).
    fn export_blocks(
        &self,
        py: Python<'_>,
        remediation: &str,
        family: u8,
        now: Option<f64>,
    ) -> PyResult<Vec<aggregate::Block>> {
        if family != 4 && family != 6 {
            return Err(PyValueError::new_err(format!("family must be 4 or 6, got {family}")));
        }
        let now = ms(clock(now)?);
        let ix = self.inner.snapshot();
        let want = match ix.remediations().iter().position(|r| r == remediation) {
            Some(id) => ix.rank_of(id as u8),
            None => return Ok(Vec::new()),
        };
        Ok(py.detach(|| {
            let bits = if family == 4 { 32 } else { 128 };
            aggregate::blocks(&aggregate::pieces(ix.active_prefixes(family, now), bits, want), bits)
        }))
    }

    fn lookup_packed<'py>(
        &self,
        py: Python<'py>,
        data: &[u8],
        family: Option<u8>,
        now: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let width = match family {
            Some(4) => 4,
            Some(6) => 16,
            Some(f) => return Err(PyValueError::new_err(format!("family must be 4 or 6, got {f}"))),
            None => return Err(PyValueError::new_err("a packed buffer needs family=4 or family=6")),
        };
        if data.len() % width != 0 {
            return Err(PyValueError::new_err(format!(
                "buffer length {} is not a multiple of {width} bytes (family={})",
                data.len(),
                if width == 4 { 4 } else { 6 }
            )));
        }
        let ix = self.inner.snapshot();
        let codes: Vec<u8> = py.detach(|| {
            if width == 4 {
                ix.codes_v4(data.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])), now)
            } else {
                data.chunks_exact(16)
                    .map(|c| {
                        let mut a = [0u8; 16];
                        a.copy_from_slice(c);
                        ix.code(u128::from_be_bytes(a), now)
                    })
                    .collect()
            }
        });
        Ok(PyBytes::new(py, &codes).into_any())
    }
}
