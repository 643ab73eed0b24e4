//! `capi_fast._native.MappedIndex`: lookups answered in place from a mapped snapshot file
//! ([`crate::mapped`]): opening one maps it read-only and checks its header, nothing is built,
//! and every process mapping the same file shares its pages.
//!
//! The crate's only `unsafe` is here: mapping a file. See [`map`] for why it holds.

use super::convert::{addr_text, clock, ms, text_of, to_py};
use super::index::PyDecisionIndex;
use crate::error::Error;
use crate::mapped::{verify, Layout};
use crate::parse::parse_addr;
use memmap2::Mmap;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Maps `path` read-only.
#[allow(unsafe_code)]
fn map(path: &Path) -> std::io::Result<Mmap> {
    let file = File::open(path)?;
    // SAFETY: memmap2 requires that the file not change while mapped (the mapping is shared
    // and read-only: a change in place would show through, and a truncation would fault).
    // Snapshot files are never written in place: every writer (`snapshot::write_atomic`, the
    // Python package's `files.write_atomic`) writes a new file and renames it over the old
    // name, so a mapping keeps the old inode's bytes until it is dropped; README says to
    // restore a snapshot the same way (copy to a temporary name, then rename). The file is
    // 0600, its writer's own. The bytes are only ever read through bounds-checked accessors
    // (in `mapped`) and nothing writes through the mapping.
    unsafe { Mmap::map(&file) }
}

/// Answers lookups in place from a mapped snapshot (see `capi_fast.mapped`).
#[pyclass(frozen, module = "capi_fast._native", name = "MappedIndex")]
pub struct PyMappedIndex {
    map: Mmap,
    layout: Layout,
    names: Vec<Py<PyString>>,
    path: PathBuf,
}

impl PyMappedIndex {
    fn bytes(&self) -> &[u8] {
        &self.map
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Tag of the decision answering `addr` at `now`.
    pub(crate) fn winner(&self, addr: crate::parse::Addr, now: u64) -> Option<u16> {
        let key = self.layout.best(self.bytes(), addr, now);
        (key != crate::slot::NO_KEY).then_some((key & 0xFFFF) as u16)
    }

    /// The interned name of the remediation answering `addr` at `now`, or None.
    fn answer(&self, py: Python<'_>, addr: crate::parse::Addr, now: u64) -> Option<Py<PyString>> {
        let rem = self.layout.lookup(self.bytes(), addr, now)?;
        self.names.get(rem as usize).map(|n| n.clone_ref(py))
    }

    fn parse(&self, py: Python<'_>, ip: &Bound<'_, PyAny>) -> PyResult<crate::parse::Addr> {
        addr_text(text_of(ip, "ip")?).and_then(parse_addr).map_err(|e| to_py(py, e))
    }
}

#[pymethods]
impl PyMappedIndex {
    /// Maps `path` (a file `DecisionIndex.save_mapped` wrote) and checks its header, section
    /// table and names; raises `SnapshotError` when they do not hold.
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let map = py
            .detach(|| map(&path))
            .map_err(|e| to_py(py, Error::Snapshot(format!("{}: cannot map: {e}", path.display()))))?;
        let layout =
            Layout::open(&map[..]).map_err(|e| to_py(py, Error::Snapshot(format!("{}: {e}", path.display()))))?;
        let names = layout.remediations().iter().map(|r| PyString::intern(py, r).unbind()).collect();
        Ok(PyMappedIndex { map, layout, names, path })
    }

    /// The remediation for `ip` at `now` (default: the current time), or None.
    #[pyo3(signature = (ip, now = None))]
    fn lookup(&self, py: Python<'_>, ip: &Bound<'_, PyAny>, now: Option<f64>) -> PyResult<Option<Py<PyString>>> {
        let addr = self.parse(py, ip)?;
        Ok(self.answer(py, addr, ms(clock(now)?)))
    }

    /// `lookup` of each address of a list.
    #[pyo3(signature = (ips, now = None))]
    fn lookup_many<'py>(
        &self,
        py: Python<'py>,
        ips: Vec<Bound<'py, PyAny>>,
        now: Option<f64>,
    ) -> PyResult<Bound<'py, PyList>> {
        let now = ms(clock(now)?);
        let mut out = Vec::with_capacity(ips.len());
        for ip in &ips {
            let addr = self.parse(py, ip)?;
            out.push(self.answer(py, addr, now));
        }
        PyList::new(py, out)
    }

    /// (origin, remediation) of the decision answering `ip` at `now`, or None.
    #[pyo3(signature = (ip, now = None))]
    fn decision_of(
        &self,
        py: Python<'_>,
        ip: &Bound<'_, PyAny>,
        now: Option<f64>,
    ) -> PyResult<Option<(String, String)>> {
        let addr = self.parse(py, ip)?;
        let Some(tag) = self.winner(addr, ms(clock(now)?)) else {
            return Ok(None);
        };
        let (o, r) = self.layout.tag_parts(tag);
        let name = |v: &[String], i: usize| v.get(i).cloned().unwrap_or_default();
        Ok(Some((name(self.layout.origins(), o as usize), name(self.layout.remediations(), r as usize))))
    }

    /// Prefixes held (a network with several decisions counts once).
    fn __len__(&self) -> usize {
        self.layout.prefixes()
    }

    /// Decisions held (a network may hold several).
    #[getter]
    fn decisions(&self) -> u64 {
        self.layout.decisions()
    }

    /// The file mapped.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// Bytes mapped.
    #[getter]
    fn size(&self) -> usize {
        self.map.len()
    }

    /// The caller metadata saved with the decisions.
    #[getter]
    fn metadata<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.layout.metadata(self.bytes()))
    }

    /// When the file was written (Unix seconds).
    #[getter]
    fn written_at(&self) -> f64 {
        self.layout.written() as f64 / 1000.0
    }

    /// The priority list the saved index was built with.
    #[getter]
    fn priorities(&self) -> Vec<String> {
        self.layout.priorities().to_vec()
    }

    /// Whether the file's checksum matches its bytes (reads them all: O(size)).
    fn verify(&self, py: Python<'_>) -> bool {
        py.detach(|| verify(self.bytes(), &self.layout))
    }

    /// A `DecisionIndex` holding the same decisions (for a writer that starts from the file).
    fn to_index(&self, py: Python<'_>) -> PyResult<PyDecisionIndex> {
        let (ix, _) = py.detach(|| self.layout.to_index(self.bytes())).map_err(|e| to_py(py, e))?;
        Ok(PyDecisionIndex::wrap(ix))
    }
}
