//! The Python bindings, `capi_fast._native`: conversions and error mapping ([`convert`]), the
//! decision index ([`index`]), the request-path answerer ([`answers`]), exports for packet filters ([`export`]), the stream reader
//! ([`stream`]) and how long loops share the GIL ([`breathe`]). The logic lives in the core
//! modules; these only convert arguments and results.

pub(crate) mod answers;
pub(crate) mod breathe;
pub(crate) mod convert;
pub(crate) mod export;
pub(crate) mod index;
pub(crate) mod mapped;
pub(crate) mod stream;

use pyo3::prelude::*;

/// The native module.
#[pymodule(gil_used = false)]
pub mod _native {
    #[pymodule_export]
    use super::answers::Remediator;
    #[pymodule_export]
    use super::export::ExportBlocks;
    #[pymodule_export]
    use super::index::{BatchResult, PyDecisionIndex};
    #[pymodule_export]
    use super::mapped::PyMappedIndex;
    #[pymodule_export]
    use super::stream::{parse_stream, ParsedStream};

    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        use pyo3::types::PyModuleMethods;
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        m.add("SNAPSHOT_VERSION", crate::snapshot::VERSION)?;
        m.add("MAPPED_MAGIC", pyo3::types::PyBytes::new(m.py(), crate::mapped::MAGIC))?;
        Ok(())
    }
}
