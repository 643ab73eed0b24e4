//! The Python binding of the stream reader: `capi_fast._native.parse_stream` and `ParsedStream`.

use crate::stream::{parse_stream as parse, StreamOps};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// The operations read from one decisions-stream answer, ready for `DecisionIndex.apply(stream=)`.
#[pyclass(frozen, module = "capi_fast._native", name = "ParsedStream")]
pub struct ParsedStream {
    pub(crate) ops: StreamOps,
}

impl Drop for ParsedStream {
    /// Python frees this object holding the GIL: a million operations are freed on a thread.
    fn drop(&mut self) {
        let ops = std::mem::take(&mut self.ops);
        let items = ops.adds.len() + ops.removes.len();
        super::breathe::free_off_gil(ops, items);
    }
}

#[pymethods]
impl ParsedStream {
    /// Decisions to add.
    #[getter]
    fn adds(&self) -> usize {
        self.ops.adds.len()
    }

    /// Decisions to remove.
    #[getter]
    fn removes(&self) -> usize {
        self.ops.removes.len()
    }

    /// Malformed items skipped.
    #[getter]
    fn skipped(&self) -> usize {
        self.ops.skipped
    }

    /// The raw JSON of the answer's `links` member, or None.
    #[getter]
    fn links<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.ops.links.as_deref().map(|b| PyBytes::new(py, b))
    }

    fn __repr__(&self) -> String {
        format!("ParsedStream(adds={}, removes={}, skipped={})", self.adds(), self.removes(), self.skipped())
    }
}

/// Reads a CAPI (v3 grouped or v2 flat) or LAPI stream answer from its raw bytes, without the GIL.
///
/// Decisions without an origin get `origin`. Bad items are skipped and counted; a body that is
/// not a JSON object raises `capi_fast.errors.ServerError`.
#[pyfunction]
#[pyo3(signature = (body, origin = "CAPI"))]
pub fn parse_stream(py: Python<'_>, body: &Bound<'_, PyBytes>, origin: &str) -> PyResult<ParsedStream> {
    let bytes = body.as_bytes();
    match py.detach(|| parse(bytes, origin)) {
        Ok(ops) => Ok(ParsedStream { ops }),
        Err(e) => Err(super::convert::to_py(py, e)),
    }
}
