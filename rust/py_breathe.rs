//! Letting other Python threads in during long loops that need the GIL.
//!
//! Reading a million Python strings, or making a million, needs the GIL for tens of
//! milliseconds. A thread waiting for it (a proxy answering a request) would otherwise wait that
//! long: CPython only asks the holder to switch after `sys.getswitchinterval()` (5 ms), and
//! native code never looks at that request. So every loop over Python objects ticks a
//! [`Breather`]; after [`HOLD`] of work it releases the GIL and pauses for [`PAUSE`], long
//! enough for a waiting thread to take it, so no thread waits for more than about `HOLD`.
//! When nobody waits the pause costs `PAUSE` in every `HOLD` (a few percent on a big batch);
//! a short batch never pauses.

use pyo3::prelude::*;
use pyo3::types::PyList;
use std::time::{Duration, Instant};

/// Longest stretch of GIL-bound work between two releases.
pub const HOLD: Duration = Duration::from_millis(1);
/// How long the GIL is left free at a release: a waiting thread wakes within it.
const PAUSE: Duration = Duration::from_micros(20);
/// Items between two looks at the clock.
const CHECK_EVERY: u32 = 256;

/// Counts items of a GIL-bound loop and releases the GIL every [`HOLD`].
pub struct Breather {
    count: u32,
    since: Instant,
}

impl Default for Breather {
    fn default() -> Self {
        Breather { count: 0, since: Instant::now() }
    }
}

impl Breather {
    /// Called once per item; now and then lets other threads run.
    #[inline]
    pub fn tick(&mut self, py: Python<'_>) {
        self.count += 1;
        if self.count < CHECK_EVERY {
            return;
        }
        self.count = 0;
        if self.since.elapsed() < HOLD {
            return;
        }
        py.detach(|| std::thread::sleep(PAUSE));
        self.since = Instant::now();
    }
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
        breather.tick(py);
    }
    Ok(list)
}
