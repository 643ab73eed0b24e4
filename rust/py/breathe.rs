//! Letting other Python threads in during long loops that need the GIL.
//!
//! Reading a million Python strings, or making a million, needs the GIL for tens of
//! milliseconds. CPython shares the GIL like this: a thread that has waited
//! `sys.getswitchinterval()` (5 ms) sets a drop request, and the interpreter loop of the
//! holder hands the GIL over at its next check. Native code never runs that check, so a waiting
//! thread (a proxy answering a request) would wait for the whole loop.
//!
//! So every loop over Python objects ticks a [`Breather`], which every [`CHECK_EVERY`] items
//! (tens of microseconds of work) calls a Python function that does nothing: entering it runs
//! the interpreter's check, which hands the GIL over if, and only if, a thread asked for it, and
//! runs pending signal handlers (so Ctrl-C interrupts a long batch, which is then not applied).
//! A waiting thread thus waits what it would wait for any Python code, never longer. Releasing
//! the GIL on a timer instead is worse: each release and retake restarts the waiter's 5 ms
//! clock, so a waiter that loses the race to retake it can starve for the whole loop.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyList, PyModule};

/// Items between two checks.
pub const CHECK_EVERY: u32 = 256;

static NOTHING: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn nothing(py: Python<'_>) -> PyResult<&Py<PyAny>> {
    NOTHING.get_or_try_init(py, || {
        let module = PyModule::from_code(
            py,
            c"def let_others_in():\n    pass\n",
            c"capi_fast_breathe.py",
            c"capi_fast_breathe",
        )?;
        Ok(module.getattr("let_others_in")?.unbind())
    })
}

/// Counts items of a GIL-bound loop and lets the interpreter switch threads now and then.
#[derive(Default)]
pub struct Breather {
    count: u32,
}

impl Breather {
    /// Called once per item; an error is a pending signal's exception (KeyboardInterrupt).
    #[inline]
    pub fn tick(&mut self, py: Python<'_>) -> PyResult<()> {
        self.count += 1;
        if self.count < CHECK_EVERY {
            return Ok(());
        }
        self.count = 0;
        nothing(py)?.call0(py)?;
        Ok(())
    }
}

/// Items from which a value is freed on a thread of its own rather than under the GIL.
const FREE_ON_A_THREAD: usize = 100_000;

/// Frees `value` (holding `items` items) without holding up other Python threads: a large one
/// on a short-lived thread (if none can be started, here).
pub fn free_off_gil<T: Send + 'static>(value: T, items: usize) {
    if items < FREE_ON_A_THREAD {
        return;
    }
    // On failure the closure, and the value with it, is dropped here.
    let _ = std::thread::Builder::new().name("capi-fast-free".into()).spawn(move || drop(value));
}

/// A Python list of `items`, made with breaks for other threads.
pub fn list_of<'py, T, I>(py: Python<'py>, items: I) -> PyResult<Bound<'py, PyList>>
where
    I: IntoIterator<Item = T>,
    T: IntoPyObject<'py>,
{
    let list = PyList::empty(py);
    let mut breather = Breather::default();
    for item in items {
        list.append(item)?;
        breather.tick(py)?;
    }
    Ok(list)
}
