//! Conversions between Python values and the core's, and the one mapping of core errors to
//! `capi_fast.errors` exceptions.

use crate::error::Error;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyString, PyType};

/// A `capi_fast.errors` exception of class `class`.
pub(crate) fn raise(py: Python<'_>, class: &str, msg: String) -> PyErr {
    match py.import("capi_fast.errors").and_then(|m| m.getattr(class)) {
        Ok(cls) => match cls.cast_into::<PyType>() {
            Ok(t) => PyErr::from_type(t, msg),
            Err(_) => PyValueError::new_err(msg),
        },
        Err(e) => e,
    }
}

pub(crate) fn to_py(py: Python<'_>, e: Error) -> PyErr {
    match e {
        Error::InvalidIp(m) => raise(py, "InvalidIP", m),
        Error::InvalidDecision(m) => raise(py, "InvalidDecision", m),
        Error::Snapshot(m) => raise(py, "SnapshotError", m),
        Error::Stream(m) => raise(py, "ServerError", m),
    }
}

pub(crate) fn clock(now: Option<f64>) -> PyResult<f64> {
    match now {
        Some(t) if t.is_finite() && t >= 0.0 => Ok(t),
        Some(t) => Err(PyValueError::new_err(format!("now must be a finite, non-negative Unix time, got {t}"))),
        None => Ok(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())),
    }
}

pub(crate) use crate::batch::ms;

/// Expiry in ms for a ttl in seconds (None: never); ValueError for NaN.
pub(crate) fn expiry(now: f64, ttl: Option<f64>) -> PyResult<u64> {
    crate::batch::expiry(now, ttl).ok_or_else(|| PyValueError::new_err("ttl must be a number of seconds, got NaN"))
}

pub(crate) fn text_of<'a, 'py>(v: &'a Bound<'py, PyAny>, what: &str) -> PyResult<&'a Bound<'py, PyString>> {
    v.cast::<PyString>().map_err(|_| {
        PyTypeError::new_err(format!(
            "{what} must be a str, got {}",
            v.get_type().name().map_or("?".into(), |n| n.to_string())
        ))
    })
}

/// The text of a value that must be an address or network: one Python cannot encode as UTF-8
/// (a lone surrogate) is not one, and is reported (or skipped) as such.
pub(crate) fn addr_text<'a>(s: &'a Bound<'_, PyString>) -> Result<&'a str, Error> {
    s.to_str().map_err(|_| Error::InvalidIp("not an IP address or network: the text is not valid UTF-8".into()))
}

/// The text of a remediation or origin name (a lone surrogate makes it one the index cannot take).
pub(crate) fn name_text<'a>(s: &'a Bound<'_, PyString>) -> Result<&'a str, Error> {
    s.to_str().map_err(|_| Error::InvalidDecision("a remediation or origin must be valid UTF-8".into()))
}

pub(crate) fn text<'py>(v: &Bound<'py, PyAny>, what: &str) -> PyResult<Bound<'py, PyString>> {
    text_of(v, what).cloned()
}

pub(crate) fn ttl_of(v: &Bound<'_, PyAny>) -> PyResult<Option<f64>> {
    if v.is_none() {
        return Ok(None);
    }
    if let Ok(f) = v.cast::<PyFloat>() {
        return Ok(Some(f.value()));
    }
    Ok(Some(v.extract::<f64>().map_err(|_| PyTypeError::new_err("ttl must be a number of seconds or None"))?))
}

pub(crate) fn opt_f64(v: Option<Bound<'_, PyAny>>) -> PyResult<Option<f64>> {
    v.map_or(Ok(None), |v| ttl_of(&v))
}
