//! `capi_fast._native.Remediator`: the engine's per-request answer, in one native call.
//!
//! It looks the address up, turns the winning remediation into the answer the engine's bouncing
//! level gives it, and counts answers by (origin of the winning decision, answer), as CrowdSec's
//! usage metrics report them. Followers of a snapshot get a reload hook called at most once per
//! interval from inside `get`.

use super::convert::{addr_text, clock, ms, text_of, to_py};
use super::index::PyDecisionIndex;
use super::mapped::PyMappedIndex;
use crate::index::Index;
use crate::parse::{parse_addr, Addr};
use hashbrown::HashMap;
use parking_lot::{Mutex, RwLock};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use std::time::Instant;

/// Origin reported for addresses no decision covers.
const CLEAN: &str = "clean";

/// What a `Remediator` answers from: the in-memory index, or a mapped snapshot.
enum Source {
    Memory(Py<PyDecisionIndex>),
    Mapped(Py<PyMappedIndex>),
}

/// The questions a `Remediator` asks its source.
trait Answers {
    /// Tag of the decision answering `addr` at `now`.
    fn winner(&self, addr: Addr, now: u64) -> Option<u16>;
    /// (origin id, remediation id) of a tag.
    fn tag_parts(&self, tag: u16) -> (u32, u8);
    fn remediations(&self) -> &[String];
    fn origins(&self) -> &[String];
}

impl Answers for Index {
    fn winner(&self, addr: Addr, now: u64) -> Option<u16> {
        Index::winner(self, addr, now)
    }
    fn tag_parts(&self, tag: u16) -> (u32, u8) {
        Index::tag_parts(self, tag)
    }
    fn remediations(&self) -> &[String] {
        Index::remediations(self)
    }
    fn origins(&self) -> &[String] {
        Index::origins(self)
    }
}

impl Answers for PyMappedIndex {
    fn winner(&self, addr: Addr, now: u64) -> Option<u16> {
        PyMappedIndex::winner(self, addr, now)
    }
    fn tag_parts(&self, tag: u16) -> (u32, u8) {
        self.layout().tag_parts(tag)
    }
    fn remediations(&self) -> &[String] {
        self.layout().remediations()
    }
    fn origins(&self) -> &[String] {
        self.layout().origins()
    }
}

impl Source {
    /// Runs `f` on the source (under the index's read lock for the in-memory one).
    fn with<R>(&self, f: impl FnOnce(&dyn Answers) -> R) -> R {
        match self {
            Source::Memory(ix) => f(&**ix.get().inner.read()),
            Source::Mapped(m) => f(m.get()),
        }
    }

    fn of(index: &Bound<'_, PyAny>) -> PyResult<Source> {
        if let Ok(ix) = index.cast::<PyDecisionIndex>() {
            return Ok(Source::Memory(ix.clone().unbind()));
        }
        match index.cast::<PyMappedIndex>() {
            Ok(m) => Ok(Source::Mapped(m.clone().unbind())),
            Err(_) => Err(pyo3::exceptions::PyTypeError::new_err("index must be a DecisionIndex or a MappedIndex")),
        }
    }

    fn object(&self, py: Python<'_>) -> Py<PyAny> {
        match self {
            Source::Memory(ix) => ix.clone_ref(py).into_any(),
            Source::Mapped(m) => m.clone_ref(py).into_any(),
        }
    }
}

struct State {
    index: Source,
    /// Remediation name -> answer; remediations not listed answer as themselves.
    mapping: HashMap<String, Py<PyString>>,
    /// Answer by remediation id of `index`, filled on first use.
    answers: Vec<Py<PyString>>,
    clean: Py<PyString>,
}

#[derive(Default)]
struct Counts {
    /// Answers by tag of the current index.
    by_tag: Vec<u64>,
    clean: u64,
    /// Counts of earlier indexes or answer tables, by (origin, answer).
    folded: HashMap<(String, String), u64>,
}

struct Follow {
    every: f64,
    /// When the hook is next due, in seconds of `clock` (or since `base`).
    next: Mutex<f64>,
    base: Instant,
    clock: Option<Py<PyAny>>,
    hook: Py<PyAny>,
}

impl Follow {
    fn now(&self, py: Python<'_>) -> PyResult<f64> {
        match &self.clock {
            Some(c) => c.call0(py)?.extract(py),
            None => Ok(self.base.elapsed().as_secs_f64()),
        }
    }
}

/// Answers "what remediation for this IP?" from a `DecisionIndex` or a `MappedIndex`, counting them.
#[pyclass(frozen, module = "capi_fast._native", name = "Remediator")]
pub struct Remediator {
    state: RwLock<State>,
    counts: Mutex<Counts>,
    follow: Option<Follow>,
}

impl Remediator {
    /// Adds the per-tag counts to the folded ones (before the index or the answers change).
    fn fold(&self, py: Python<'_>, st: &State) {
        let mut c = self.counts.lock();
        let by_tag = std::mem::take(&mut c.by_tag);
        st.index.with(|ix| {
            for (tag, &n) in by_tag.iter().enumerate().filter(|&(_, &n)| n > 0) {
                let (origin, rem) = ix.tag_parts(tag as u16);
                let answer = Self::answer_of(py, st, &ix.remediations()[rem as usize]);
                let key = (ix.origins()[origin as usize].clone(), answer);
                *c.folded.entry(key).or_default() += n;
            }
        });
        let clean = std::mem::take(&mut c.clean);
        if clean > 0 {
            *c.folded.entry((CLEAN.to_owned(), st.clean.bind(py).to_string())).or_default() += clean;
        }
    }

    fn answer_of(py: Python<'_>, st: &State, rem: &str) -> String {
        st.mapping.get(rem).map_or_else(|| rem.to_owned(), |a| a.bind(py).to_string())
    }

    fn answers_for(py: Python<'_>, st: &State) -> Vec<Py<PyString>> {
        st.index.with(|ix| {
            ix.remediations()
                .iter()
                .map(|r| st.mapping.get(r).map_or_else(|| PyString::intern(py, r).unbind(), |a| a.clone_ref(py)))
                .collect()
        })
    }

    /// Calls the reload hook when it is due.
    fn maybe_reload(&self, py: Python<'_>) -> PyResult<()> {
        let Some(f) = &self.follow else { return Ok(()) };
        let now = f.now(py)?;
        {
            let mut next = f.next.lock();
            if now < *next {
                return Ok(());
            }
            *next = now + f.every;
        }
        f.hook.call0(py)?;
        Ok(())
    }
}

#[pymethods]
impl Remediator {
    /// `answers` maps remediations to what `get` answers for them (unlisted ones answer as
    /// themselves); `clean` is the answer when no decision applies. With `reload`, `get` calls
    /// `reload()` at most once per `check_every` seconds of `monotonic()` (default: the
    /// process's monotonic clock, read natively).
    #[new]
    #[pyo3(signature = (index, answers, *, clean = "bypass", reload = None, check_every = 1.0, monotonic = None))]
    fn new(
        py: Python<'_>,
        index: &Bound<'_, PyAny>,
        answers: std::collections::HashMap<String, String>,
        clean: &str,
        reload: Option<Py<PyAny>>,
        check_every: f64,
        monotonic: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        if !(check_every.is_finite() && check_every >= 0.0) {
            return Err(pyo3::exceptions::PyValueError::new_err("check_every must be a finite number of seconds >= 0"));
        }
        let mapping = answers.into_iter().map(|(k, v)| (k, PyString::intern(py, &v).unbind())).collect();
        let index = Source::of(index)?;
        let mut st = State { index, mapping, answers: Vec::new(), clean: PyString::intern(py, clean).unbind() };
        st.answers = Self::answers_for(py, &st);
        let follow = match reload {
            None => None,
            Some(hook) => {
                let mut f =
                    Follow { every: check_every, next: Mutex::new(0.0), base: Instant::now(), clock: monotonic, hook };
                *f.next.get_mut() = f.now(py)? + check_every;
                Some(f)
            }
        };
        Ok(Remediator { state: RwLock::new(st), counts: Mutex::new(Counts::default()), follow })
    }

    /// The answer for `ip` at `now`, counted under the winning decision's origin.
    ///
    /// Raises `InvalidIP` for a malformed address (not counted).
    #[pyo3(signature = (ip, now = None))]
    fn get(&self, py: Python<'_>, ip: &Bound<'_, PyAny>, now: Option<f64>) -> PyResult<Py<PyString>> {
        self.maybe_reload(py)?;
        let addr = addr_text(text_of(ip, "ip")?).and_then(parse_addr).map_err(|e| to_py(py, e))?;
        let now = ms(clock(now)?);
        loop {
            let st = self.state.read();
            let winner = st.index.with(|ix| ix.winner(addr, now).map(|tag| (tag, ix.tag_parts(tag).1)));
            let Some((tag, rem)) = winner else {
                self.counts.lock().clean += 1;
                return Ok(st.clean.clone_ref(py));
            };
            if let Some(a) = st.answers.get(rem as usize) {
                let mut c = self.counts.lock();
                let t = tag as usize;
                if t >= c.by_tag.len() {
                    c.by_tag.resize(t + 1, 0);
                }
                c.by_tag[t] += 1;
                return Ok(a.clone_ref(py));
            }
            // A remediation interned after the answers were computed: compute them again.
            drop(st);
            let mut st = self.state.write();
            st.answers = Self::answers_for(py, &st);
        }
    }

    /// Counts the last answer for `ip` as `answer` instead of what `get` gave: the final
    /// answer differed (a solved captcha lets the request through, so it counts as a bypass).
    /// The count moves within the deciding decision's origin; nothing moves when no count is
    /// there to move (the decision changed in between). Raises `InvalidIP` like `get`.
    #[pyo3(signature = (ip, answer, now = None))]
    fn recount(&self, py: Python<'_>, ip: &Bound<'_, PyAny>, answer: &str, now: Option<f64>) -> PyResult<()> {
        let addr = addr_text(text_of(ip, "ip")?).and_then(parse_addr).map_err(|e| to_py(py, e))?;
        let now = ms(clock(now)?);
        let st = self.state.read();
        let mut c = self.counts.lock();
        let winner = st
            .index
            .with(|ix| ix.winner(addr, now).map(|tag| (tag, ix.origins()[ix.tag_parts(tag).0 as usize].clone())));
        let origin = match winner {
            Some((tag, origin)) => match c.by_tag.get_mut(tag as usize) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    origin
                }
                _ => return Ok(()),
            },
            None if c.clean > 0 => {
                c.clean -= 1;
                CLEAN.to_owned()
            }
            None => return Ok(()),
        };
        *c.folded.entry((origin, answer.to_owned())).or_default() += 1;
        Ok(())
    }

    /// Answers `get` from now on (a `DecisionIndex` or a `MappedIndex`); the counts so far are kept.
    fn set_index(&self, py: Python<'_>, index: &Bound<'_, PyAny>) -> PyResult<()> {
        let source = Source::of(index)?;
        let mut st = self.state.write();
        self.fold(py, &st);
        st.index = source;
        st.answers = Self::answers_for(py, &st);
        Ok(())
    }

    /// Replaces the remediation -> answer table; the counts so far are kept.
    fn set_answers(&self, py: Python<'_>, answers: std::collections::HashMap<String, String>) {
        let mut st = self.state.write();
        self.fold(py, &st);
        st.mapping = answers.into_iter().map(|(k, v)| (k, PyString::intern(py, &v).unbind())).collect();
        st.answers = Self::answers_for(py, &st);
    }

    /// Replaces the answer for an address no decision covers; the counts so far are kept.
    fn set_clean(&self, py: Python<'_>, clean: &str) {
        let mut st = self.state.write();
        self.fold(py, &st);
        st.clean = PyString::intern(py, clean).unbind();
    }

    /// The index answering.
    #[getter]
    fn index(&self, py: Python<'_>) -> Py<PyAny> {
        self.state.read().index.object(py)
    }

    /// Answers given so far, by (origin of the winning decision or `clean`, answer).
    fn counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let st = self.state.read();
        self.fold(py, &st);
        let out = PyDict::new(py);
        for ((origin, answer), n) in &self.counts.lock().folded {
            out.set_item((origin, answer), n)?;
        }
        Ok(out)
    }

    /// Returns the counts and starts again from zero (for periodic metrics pushes).
    fn take_counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = self.counts(py)?;
        self.counts.lock().folded.clear();
        Ok(out)
    }
}
