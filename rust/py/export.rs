//! Exports for packet filters: [`ExportBlocks`] keeps one export native, so a sync compares the
//! next one with it without making a Python string per CIDR (`DecisionIndex.export_changes`).

use super::breathe::Breather;
use crate::aggregate::Block;
use crate::parse::{format_net, Net};
use crate::slot::NEVER;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// One export of a remediation in one family: CIDR blocks with when each stops answering it.
#[pyclass(frozen, module = "capi_fast._native")]
pub struct ExportBlocks {
    pub(crate) family: u8,
    pub(crate) blocks: Vec<Block>,
}

#[pymethods]
impl ExportBlocks {
    fn __len__(&self) -> usize {
        self.blocks.len()
    }

    /// The address family (4 or 6).
    #[getter]
    fn family(&self) -> u8 {
        self.family
    }

    /// CIDR -> end of its answer (Unix seconds; None: never), as `export_until` gives.
    fn content<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        dict_of(py, self.family, self.blocks.iter())
    }
}

/// The CIDR text of a block.
pub(crate) fn cidr(family: u8, b: &Block) -> String {
    format_net(if family == 4 { Net::V4(b.0 as u32, b.1) } else { Net::V6(b.0, b.1) })
}

/// CIDR -> end (None for [`NEVER`]) of `blocks`.
pub(crate) fn dict_of<'py, 'a>(
    py: Python<'py>,
    family: u8,
    blocks: impl Iterator<Item = &'a Block>,
) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    let mut breathe = Breather::default();
    for b in blocks {
        breathe.tick(py)?;
        if b.2 >= NEVER {
            out.set_item(cidr(family, b), py.None())?;
        } else {
            out.set_item(cidr(family, b), b.2 as f64 / 1000.0)?;
        }
    }
    Ok(out)
}
