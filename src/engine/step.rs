//! One step, from the arrays a front end read to the jobs that update them.
//!
//! 1. A front end describes each tensor's parameter and state arrays ([`RawArray`]s read from
//!    their headers) and checks them once with [`TensorState::check`]: types, shapes, alignment,
//!    writeability, layout. It keeps the result between steps, and each step only compares the
//!    live headers with it.
//! 2. Each step, the gradient is checked against its parameter ([`CheckedTensor::new`]).
//! 3. [`StepMemory::new`] gathers the checked tensors and the claims on their memory (which fails
//!    if two arrays of the step overlap).
//! 4. The caller registers those claims ([`Registration`]) against steps on other threads, and
//!    hands the registration to [`StepMemory::jobs`]. Only then can the typed slices exist: the
//!    jobs borrow the step memory (so the descriptions, and the objects that the caller keeps
//!    alive as long as it, outlive them) and carry the registration (so no other step touches
//!    that memory while they run). Step counts kept in memory ([`StepNumber::Counted`]) are read
//!    there too, under the registration, and written back before it is released.

use std::fmt;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::kernel::blockwise::{QuantizedSlices, BLOCK};
use crate::kernel::{
    Coefficients, Float, Hyperparameters, StridedArray, StridedTensor, TensorSlices, Update,
};

use super::buffers::{recycle, StepBuffers};
use super::claims::{Conflict, Registration, StepClaims};
use super::counter::StepCounter;
use super::job::{with_precision_types, Job, Precision, Work};
use super::memory::{Dims, Element, Extent, LayoutError, RawArray};
use super::schedule;

/// The arrays of a tensor, in the order of claim tags (`tag = ROLES * tensor + role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Param,
    Grad,
    ExpAvg,
    ExpInf,
    Master,
    /// The block scales of 8-bit `exp_avg`.
    ExpAvgScale,
    /// The block scales of 8-bit `exp_inf`.
    ExpInfScale,
    /// The step count kept in memory (torch's `state["step"]`), see [`StepCounter`].
    Step,
}

/// Arrays per tensor (the number of [`Role`]s).
pub const ROLES: usize = 8;

/// The roles of the arrays a step writes, in the order [`TensorState`] keeps their extents.
const WRITTEN_ROLES: [Role; 6] = [
    Role::Param,
    Role::ExpAvg,
    Role::ExpInf,
    Role::Master,
    Role::ExpAvgScale,
    Role::ExpInfScale,
];

impl Role {
    /// The role of claim tag `tag`, and the index of its tensor in the step.
    pub fn of_tag(tag: usize) -> (usize, Role) {
        const ALL: [Role; ROLES] = [
            Role::Param,
            Role::Grad,
            Role::ExpAvg,
            Role::ExpInf,
            Role::Master,
            Role::ExpAvgScale,
            Role::ExpInfScale,
            Role::Step,
        ];
        (tag / ROLES, ALL[tag % ROLES])
    }

    /// How messages name the array.
    pub fn describe(self) -> &'static str {
        match self {
            Role::Param => "the parameter",
            Role::Grad => "the gradient",
            Role::ExpAvg => "exp_avg",
            Role::ExpInf => "exp_inf",
            Role::Master => "the master copy",
            Role::ExpAvgScale => "exp_avg_scale",
            Role::ExpInfScale => "exp_inf_scale",
            Role::Step => "state['step']",
        }
    }
}

/// Why one tensor's arrays cannot be stepped. [`TensorError::is_type_error`] tells which Python
/// exception it becomes.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorError {
    /// An array's description is unusable.
    Layout { role: Role, error: LayoutError },
    /// No kernel for this parameter type with this state type.
    Unsupported { param: Element, state: Element },
    /// An array's element type differs from the one it must have.
    Dtype {
        role: Role,
        got: Element,
        expected: Element,
        like: Role,
    },
    /// An array's shape differs from the parameter's.
    Shape {
        role: Role,
        got: Dims,
        expected: Dims,
    },
    /// An array's start or strides are not multiples of its element size.
    Misaligned { role: Role },
    /// A written array may not be written.
    ReadOnly { role: Role },
    /// A written array reaches the same element through two indices.
    SelfOverlap { role: Role },
    /// 8-bit state (uint8 codes) without its block scales, or scales with other state.
    Scales { present: bool },
    /// 8-bit state needs the parameter (and its gradient and codes) stored contiguously in one
    /// element order.
    NotContiguous { role: Role },
}

impl TensorError {
    /// `true` for errors of type (TypeError), `false` for errors of value (ValueError).
    pub fn is_type_error(&self) -> bool {
        matches!(
            self,
            TensorError::Unsupported { .. }
                | TensorError::Dtype { .. }
                | TensorError::Misaligned { .. }
        )
    }
}

fn shape_text(shape: &[usize]) -> String {
    match shape {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

impl fmt::Display for TensorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TensorError::Layout { role, error } => {
                write!(f, "{} cannot be used: {error}", role.describe())
            }
            TensorError::Unsupported { param, state } => {
                write!(f, "a {param} parameter with {state} state is not supported")
            }
            TensorError::Dtype {
                role,
                got,
                expected,
                like,
            } if role == like => write!(
                f,
                "{} has dtype {got}; it must be {expected}",
                role.describe()
            ),
            TensorError::Dtype {
                role,
                got,
                expected,
                like,
            } => write!(
                f,
                "{} has dtype {got} but {} has dtype {expected}",
                role.describe(),
                like.describe()
            ),
            TensorError::Shape {
                role: role @ (Role::ExpAvgScale | Role::ExpInfScale),
                got,
                expected,
            } => write!(
                f,
                "{} has shape {} but 8-bit state has one scale per block of {} elements of the \
                 parameter: shape {}",
                role.describe(),
                shape_text(got),
                crate::kernel::blockwise::BLOCK,
                shape_text(expected)
            ),
            TensorError::Shape {
                role,
                got,
                expected,
            } => write!(
                f,
                "{} has shape {} but the parameter has shape {}",
                role.describe(),
                shape_text(got),
                shape_text(expected)
            ),
            TensorError::Misaligned { role } => write!(
                f,
                "{} is not aligned to its element size; make an aligned copy first",
                role.describe()
            ),
            TensorError::ReadOnly { role } => {
                write!(f, "{} is read-only (not writeable)", role.describe())
            }
            TensorError::SelfOverlap { role } => write!(
                f,
                "{} reaches the same memory through different indices (a broadcast or \
                 overlapping view); an array that is written needs one element per index",
                role.describe()
            ),
            TensorError::Scales { present: false } => write!(
                f,
                "its state has uint8 codes (8-bit state) but no exp_avg_scale and exp_inf_scale"
            ),
            TensorError::Scales { present: true } => write!(
                f,
                "its state has block scales, which only 8-bit (uint8) state has"
            ),
            TensorError::NotContiguous { role } => write!(
                f,
                "{} is not contiguous in the parameter's element order; 8-bit state needs the \
                 parameter, its gradient and its codes stored contiguously in one order",
                role.describe()
            ),
        }
    }
}

impl std::error::Error for TensorError {}

/// A parameter and its state arrays, checked: what a front end keeps between steps.
#[derive(Clone, Debug)]
pub struct TensorState {
    param: RawArray,
    exp_avg: RawArray,
    exp_inf: RawArray,
    master: Option<RawArray>,
    /// The block scales of 8-bit state (exp_avg's, exp_inf's).
    scales: Option<[RawArray; 2]>,
    precision: Precision,
    /// The element order shared by the parameter and its state when all are dense, so that one
    /// flat loop pairs their elements.
    flat_order: Option<SmallVec<[isize; 4]>>,
    /// The bytes each written array touches (in [`WRITTEN_ROLES`] order), computed once.
    written: [Option<Extent>; 6],
    /// Bytes one update of this tensor moves.
    cost: usize,
    /// Where the flat loop's slices start (param, exp_avg, exp_inf, master) and how many values
    /// they hold, when the flat loop applies.
    flat: Option<FlatStarts>,
    /// Unique in the process: two checks with the same id describe the same arrays.
    id: u64,
}

/// The start of each written array's flat slice (in [`WRITTEN_ROLES`] order), and the length of
/// the parameter's in values of the storage type.
#[derive(Clone, Copy, Debug)]
struct FlatStarts {
    starts: [usize; 6],
    len: usize,
}

/// Numbers [`TensorState`]s, so that a step can tell cheaply whether its tensors are the ones of
/// the previous step.
static NEXT_STATE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn check_written(role: Role, array: &RawArray, param: &RawArray) -> Result<(), TensorError> {
    array
        .validate()
        .map_err(|error| TensorError::Layout { role, error })?;
    if array.shape != param.shape {
        return Err(TensorError::Shape {
            role,
            got: array.shape.clone(),
            expected: param.shape.clone(),
        });
    }
    if !array.is_aligned() {
        return Err(TensorError::Misaligned { role });
    }
    if !array.writeable {
        return Err(TensorError::ReadOnly { role });
    }
    if array.overlaps_itself() {
        return Err(TensorError::SelfOverlap { role });
    }
    Ok(())
}

/// Checks the block scales of 8-bit state: float32, one per block, contiguous, writeable.
fn check_scale(role: Role, scale: &RawArray, blocks: usize) -> Result<(), TensorError> {
    scale
        .validate()
        .map_err(|error| TensorError::Layout { role, error })?;
    if scale.element != Element::Float32 {
        return Err(TensorError::Dtype {
            role,
            got: scale.element,
            expected: Element::Float32,
            like: role,
        });
    }
    if scale.shape.len() != 1 || scale.shape[0] != blocks {
        return Err(TensorError::Shape {
            role,
            got: scale.shape.clone(),
            expected: [blocks].into_iter().collect(),
        });
    }
    if !scale.is_aligned() {
        return Err(TensorError::Misaligned { role });
    }
    if !scale.writeable {
        return Err(TensorError::ReadOnly { role });
    }
    if blocks > 1 && scale.strides[0] != 4 {
        return Err(TensorError::NotContiguous { role });
    }
    Ok(())
}

/// Checks a gradient against its parameter: element type, shape, alignment.
pub fn check_gradient(param: &RawArray, grad: &RawArray) -> Result<(), TensorError> {
    grad.validate().map_err(|error| TensorError::Layout {
        role: Role::Grad,
        error,
    })?;
    if grad.element != param.element {
        return Err(TensorError::Dtype {
            role: Role::Grad,
            got: grad.element,
            expected: param.element,
            like: Role::Param,
        });
    }
    if grad.shape != param.shape {
        return Err(TensorError::Shape {
            role: Role::Grad,
            got: grad.shape.clone(),
            expected: param.shape.clone(),
        });
    }
    if !grad.is_aligned() {
        return Err(TensorError::Misaligned { role: Role::Grad });
    }
    Ok(())
}

impl TensorState {
    /// Checks a parameter and its state arrays (and master copy, and the block scales of 8-bit
    /// state).
    pub fn check(
        param: RawArray,
        exp_avg: RawArray,
        exp_inf: RawArray,
        master: Option<RawArray>,
        scales: Option<[RawArray; 2]>,
    ) -> Result<TensorState, TensorError> {
        check_written(Role::Param, &param, &param)?;
        if param.element == Element::UInt8 {
            return Err(TensorError::Unsupported {
                param: param.element,
                state: exp_avg.element,
            });
        }
        if exp_inf.element != exp_avg.element {
            return Err(TensorError::Dtype {
                role: Role::ExpInf,
                got: exp_inf.element,
                expected: exp_avg.element,
                like: Role::ExpAvg,
            });
        }
        let blockwise = exp_avg.element == Element::UInt8;
        if blockwise != scales.is_some() {
            return Err(TensorError::Scales {
                present: scales.is_some(),
            });
        }
        if let Some(master) = &master {
            // A master copy has the state's float type, and at least float32 (with bfloat16 or
            // 8-bit state, it is float32).
            let expected = match exp_avg.element {
                Element::UInt8 | Element::BFloat16 => Element::Float32,
                other => other,
            };
            if master.element != expected {
                return Err(TensorError::Dtype {
                    role: Role::Master,
                    got: master.element,
                    expected,
                    like: Role::ExpAvg,
                });
            }
        }
        let both_complex =
            param.element.real_part().is_some() == exp_avg.element.real_part().is_some();
        let precision = match Precision::of(param.element, exp_avg.element) {
            Some(p) if both_complex => p,
            _ => {
                return Err(TensorError::Unsupported {
                    param: param.element,
                    state: exp_avg.element,
                })
            }
        };
        check_written(Role::ExpAvg, &exp_avg, &param)?;
        check_written(Role::ExpInf, &exp_inf, &param)?;
        if let Some(master) = &master {
            check_written(Role::Master, master, &param)?;
        }
        let order = param.element_order();
        let arrays = [
            Some(&param),
            Some(&exp_avg),
            Some(&exp_inf),
            master.as_ref(),
        ];
        let flat = order.is_some()
            && arrays
                .into_iter()
                .flatten()
                .all(|a| a.is_dense() && a.element_order() == order);
        // Complex elements are pairs of reals: twice as many `P`/`S` values.
        let pairs = if param.element.real_part().is_some() {
            2
        } else {
            1
        };
        let len = param.len().unwrap_or(0) * pairs;
        let blocks = len.div_ceil(BLOCK);
        if let Some(scales) = &scales {
            if !flat {
                let roles = [Role::Param, Role::ExpAvg, Role::ExpInf, Role::Master];
                let role = roles
                    .into_iter()
                    .zip(arrays)
                    .find(|(_, a)| a.is_some_and(|a| !a.is_dense() || a.element_order() != order))
                    .map_or(Role::Param, |(r, _)| r);
                return Err(TensorError::NotContiguous { role });
            }
            for (role, scale) in [Role::ExpAvgScale, Role::ExpInfScale]
                .into_iter()
                .zip(scales)
            {
                check_scale(role, scale, blocks)?;
            }
        }
        let [avg_scale, inf_scale] = match &scales {
            Some([a, b]) => [Some(a), Some(b)],
            None => [None, None],
        };
        let written_arrays = [
            Some(&param),
            Some(&exp_avg),
            Some(&exp_inf),
            master.as_ref(),
            avg_scale,
            inf_scale,
        ];
        let written = written_arrays.map(|a| a.and_then(RawArray::extent));
        let cost = precision.bytes(len, blocks, master.is_some());
        let flat_starts = flat.then(|| FlatStarts {
            starts: written_arrays.map(|a| a.map_or(0, start)),
            len,
        });
        Ok(TensorState {
            param,
            exp_avg,
            exp_inf,
            master,
            scales,
            precision,
            flat_order: if flat { order } else { None },
            written,
            cost,
            flat: flat_starts,
            id: NEXT_STATE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// The parameter's description.
    pub fn param(&self) -> &RawArray {
        &self.param
    }

    /// The first moment's description.
    pub fn exp_avg(&self) -> &RawArray {
        &self.exp_avg
    }

    /// The infinity norm's description.
    pub fn exp_inf(&self) -> &RawArray {
        &self.exp_inf
    }

    /// The master copy's description, if there is one.
    pub fn master(&self) -> Option<&RawArray> {
        self.master.as_ref()
    }

    /// The block scales' descriptions, for 8-bit state.
    pub fn scales(&self) -> Option<&[RawArray; 2]> {
        self.scales.as_ref()
    }
}

/// A gradient, as a front end read it.
#[derive(Clone, Copy, Debug)]
pub enum GradArray<'o> {
    /// Laid out exactly like its parameter (element type, shape, strides), at this address: the
    /// common case, for which nothing about the layout needs working out again.
    LikeParam { address: usize },
    /// Any other layout.
    Other(&'o RawArray),
}

/// Which step of its tensor a step is: given by the front end, or read from the count kept in
/// memory once the step's memory is claimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepNumber<'o> {
    /// This number (>= 1), which the front end keeps and advances itself.
    Given(u64),
    /// The count in this counter plus one ([`StepCounter::next_step`]), read in
    /// [`StepMemory::jobs`] and written back when the update has run, under the step's claims.
    Counted(StepCounter<'o>),
}

impl<'o> StepNumber<'o> {
    fn counter(self) -> Option<StepCounter<'o>> {
        match self {
            StepNumber::Given(_) => None,
            StepNumber::Counted(counter) => Some(counter),
        }
    }
}

/// A tensor whose arrays passed every check, for one step.
#[derive(Clone, Copy, Debug)]
pub struct CheckedTensor<'o> {
    state: &'o TensorState,
    grad: GradArray<'o>,
    grad_extent: Option<Extent>,
    /// The flat slices' starts when the flat loop applies to this step (the state's and the
    /// gradient's layouts agree). This and the fields below are copied from the state: a step's
    /// later passes then read this compact, contiguous record instead of each tensor's large
    /// state, which for thousands of small tensors is mostly out of cache.
    flat: Option<FlatStarts>,
    precision: Precision,
    has_master: bool,
    cost: usize,
    id: u64,
    group: usize,
    step: StepNumber<'o>,
}

impl<'o> CheckedTensor<'o> {
    /// Checks `grad` against the parameter of `state` for the step `step` with the
    /// hyperparameters of group `group`. A counted step's counter is claimed with the arrays the
    /// step writes.
    ///
    /// # Safety
    /// For `'o`, `state` and `grad` must describe the current memory of live arrays: the caller
    /// read (or compared) their owners' headers for this step, and keeps those owners alive and
    /// un-resized for `'o`. (The engine itself cannot read Python objects.)
    pub unsafe fn new(
        state: &'o TensorState,
        grad: GradArray<'o>,
        group: usize,
        step: StepNumber<'o>,
    ) -> Result<Self, TensorError> {
        let grad = match grad {
            GradArray::LikeParam { address } => {
                let param = &state.param;
                if address % param.element.real_part().unwrap_or(param.element).size() != 0 {
                    return Err(TensorError::Misaligned { role: Role::Grad });
                }
                // The parameter's extent, moved to the gradient's address.
                let grad_extent = state.written[0].and_then(|e| {
                    Some(Extent {
                        start: address.checked_add(e.start.wrapping_sub(param.address))?,
                        end: address.checked_add(e.end.wrapping_sub(param.address))?,
                    })
                });
                if grad_extent.is_none() && !param.is_empty() {
                    return Err(TensorError::Layout {
                        role: Role::Grad,
                        error: LayoutError::TooLarge,
                    });
                }
                return Ok(CheckedTensor::with_layout(
                    state,
                    GradArray::LikeParam { address },
                    grad_extent,
                    true,
                    group,
                    step,
                ));
            }
            GradArray::Other(grad) => grad,
        };
        check_gradient(&state.param, grad)?;
        let grad_extent = grad.extent();
        let flat = match (&state.flat_order, grad_extent) {
            (Some(order), Some(e)) => {
                // Dense: its elements fill its extent exactly (for arrays of one shape and
                // element type, the same extent size as the parameter's, and no self-overlap).
                let dense = e.end - e.start == state.param.len().unwrap_or(0) * grad.element.size()
                    && !grad.overlaps_itself();
                dense && grad.element_order().as_ref() == Some(order)
            }
            // No elements: nothing to update either way.
            (_, None) => true,
            (None, Some(_)) => false,
        };
        if state.precision.is_blockwise() && !flat && !param_is_empty(state) {
            return Err(TensorError::NotContiguous { role: Role::Grad });
        }
        Ok(CheckedTensor::with_layout(
            state,
            GradArray::Other(grad),
            grad_extent,
            flat,
            group,
            step,
        ))
    }

    /// The record of a checked tensor; `flat` says whether the gradient's layout allows the flat
    /// loop (which also needs the state's).
    fn with_layout(
        state: &'o TensorState,
        grad: GradArray<'o>,
        grad_extent: Option<Extent>,
        flat: bool,
        group: usize,
        step: StepNumber<'o>,
    ) -> Self {
        CheckedTensor {
            state,
            grad,
            grad_extent,
            flat: if flat { state.flat } else { None },
            precision: state.precision,
            has_master: state.master.is_some(),
            cost: state.cost,
            id: state.id,
            group,
            step,
        }
    }
}

fn param_is_empty(state: &TensorState) -> bool {
    state.param.is_empty()
}

/// Why a step's memory cannot be used: two of its arrays overlap (tags name them).
pub type StepError = Conflict;

/// The coefficients of one (group, step number) pair, in both compute types.
struct StepCoefficients {
    single: Coefficients<f32>,
    double: Coefficients<f64>,
}

impl StepCoefficients {
    fn new(hyperparameters: &Hyperparameters, step: u64) -> Self {
        StepCoefficients {
            single: hyperparameters.coefficients(step),
            double: hyperparameters.coefficients(step),
        }
    }
}

/// Finds each tensor's entry of a step's coefficients. Tensors of one group and step number come
/// in runs (a group's tensors are consecutive, and usually share their count), so a tensor with
/// the key of the one before reuses its entry, and any other key pushes a new one.
#[derive(Default)]
struct CoefficientRuns {
    last: Option<((usize, u64), u32)>,
}

impl CoefficientRuns {
    fn entry(
        &mut self,
        coefficients: &mut Vec<StepCoefficients>,
        hyperparameters: &[Hyperparameters],
        group: usize,
        step: u64,
    ) -> u32 {
        let key = (group, step);
        match self.last {
            Some((known, k)) if known == key => k,
            _ => {
                coefficients.push(StepCoefficients::new(&hyperparameters[group], step));
                let k = (coefficients.len() - 1) as u32;
                self.last = Some((key, k));
                k
            }
        }
    }
}

/// Picks the coefficients of one compute type.
trait CachedCoefficients: Float {
    fn pick(c: &StepCoefficients) -> &Coefficients<Self>;
}

impl CachedCoefficients for f32 {
    fn pick(c: &StepCoefficients) -> &Coefficients<f32> {
        &c.single
    }
}

impl CachedCoefficients for f64 {
    fn pick(c: &StepCoefficients) -> &Coefficients<f64> {
        &c.double
    }
}

/// Why [`StepMemory::jobs`] made no jobs (having released the registration it was given).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobsRefused {
    /// The registration was for other claims.
    OtherClaims,
    /// The count of the tensor at this index of the step is not a count (see
    /// [`StepCounter::next_step`]): nothing was written.
    NotACount { index: usize },
}

/// Every checked tensor of a step, the coefficients they use, and the step's claims.
pub struct StepMemory<'o> {
    tensors: Vec<CheckedTensor<'o>>,
    /// The groups' hyperparameters, kept for the coefficients of counted steps, whose numbers
    /// are known only under the claims (empty when the step counts none).
    hyperparameters: Vec<Hyperparameters>,
    /// One entry per run of tensors sharing a group and a step number.
    coefficients: Vec<StepCoefficients>,
    /// For each tensor, its entry in `coefficients` (for a counted step, set in `jobs`).
    coefficient_of: Vec<u32>,
    claims: Arc<StepClaims>,
    cost: usize,
}

impl<'o> StepMemory<'o> {
    /// Gathers `tensors` (with `hyperparameters[g]` for group `g`) and checks that no array
    /// written overlaps another array of the step. `writes` keeps the written set between steps
    /// (see [`WriteSetCache`]).
    pub fn new(
        tensors: Vec<CheckedTensor<'o>>,
        hyperparameters: &[Hyperparameters],
        buffers: &mut StepBuffers,
    ) -> Result<Self, StepError> {
        let mut read = std::mem::take(&mut buffers.reads);
        read.clear();
        let mut coefficients: Vec<StepCoefficients> = Vec::new();
        let mut coefficient_of = std::mem::take(&mut buffers.coefficient_of);
        coefficient_of.clear();
        let mut runs = CoefficientRuns::default();
        let mut cost = 0;
        let mut counted = false;
        for (index, t) in tensors.iter().enumerate() {
            if let Some(extent) = t.grad_extent {
                read.push((extent, ROLES * index + Role::Grad as usize));
            }
            cost += t.cost;
            let StepNumber::Given(step) = t.step else {
                counted = true;
                coefficient_of.push(u32::MAX);
                continue;
            };
            coefficient_of.push(runs.entry(&mut coefficients, hyperparameters, t.group, step));
        }
        // The written arrays are those of the tensors' checked states: the same sequence of states
        // as the last step (by id) means the same written set, which is then not rebuilt.
        // Two ids a tensor: its state's, and its counter's (0 for none), which the state's id
        // does not determine.
        let ids = tensors
            .iter()
            .flat_map(|t| [t.id, t.step.counter().map_or(0, StepCounter::id)]);
        let claims =
            match StepClaims::check(ids, || written_extents(&tensors), read, &mut buffers.writes) {
                Ok(claims) => claims,
                Err(conflict) => {
                    buffers.keep_tensors(tensors);
                    return Err(conflict);
                }
            };
        Ok(StepMemory {
            tensors,
            hyperparameters: if counted {
                hyperparameters.to_vec()
            } else {
                Vec::new()
            },
            coefficients,
            coefficient_of,
            claims: Arc::new(claims),
            cost,
        })
    }

    /// The claims to register before [`StepMemory::jobs`].
    pub fn claims(&self) -> &Arc<StepClaims> {
        &self.claims
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// `true` when no tensor is stepped.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Bytes the step moves through memory.
    pub fn cost(&self) -> usize {
        self.cost
    }

    /// Gives this step's vectors back to `buffers` for the next step.
    pub fn finish(self, buffers: &mut StepBuffers) {
        let StepMemory {
            tensors,
            coefficient_of,
            claims,
            ..
        } = self;
        buffers.keep_tensors(tensors);
        buffers.coefficient_of = coefficient_of;
        if let Ok(claims) = Arc::try_unwrap(claims) {
            buffers.reads = claims.into_reads();
        }
    }

    /// The typed jobs of this step, usable while `registration` (of exactly this step's claims)
    /// is held. The counts of counted steps are read here, under the claims, which no other step
    /// can change before this one writes them back. On refusal the registration is released and
    /// nothing has been written.
    pub fn jobs(
        &mut self,
        registration: Registration,
        buffers: &mut StepBuffers,
    ) -> Result<Registered<'_>, JobsRefused> {
        if !registration.covers(&self.claims) {
            return Err(JobsRefused::OtherClaims);
        }
        let mut counters: Vec<(StepCounter<'_>, u64)> =
            recycle(std::mem::take(&mut buffers.counters));
        let mut runs = CoefficientRuns::default();
        for (index, t) in self.tensors.iter().enumerate() {
            let Some(counter) = t.step.counter() else {
                continue;
            };
            // SAFETY: `registration` covers this step's claims (checked above), which include
            // the count's bytes (`written_extents`), and is held until the count is read.
            let Some(step) = (unsafe { counter.next_step() }) else {
                buffers.counters = recycle(counters);
                return Err(JobsRefused::NotACount { index });
            };
            self.coefficient_of[index] =
                runs.entry(&mut self.coefficients, &self.hyperparameters, t.group, step);
            counters.push((counter, step));
        }
        // From here on the step memory is only read, for as long as the jobs borrow it.
        let this: &Self = self;
        let mut jobs: Vec<Job<'_>> = recycle(std::mem::take(&mut buffers.jobs));
        jobs.reserve(this.tensors.len());
        for (t, &k) in this.tensors.iter().zip(&this.coefficient_of) {
            let coefficients = &this.coefficients[k as usize];
            // SAFETY (both calls below): `registration` covers this step's claims (checked
            // above), which were computed in `new` from these very descriptions: no array written
            // overlaps any other array of the step or of another running step, and it stays so
            // while the registration, which the returned value owns, is held.
            // `TensorState::check` and `CheckedTensor::new` found the element types to be `P`
            // (param, grad) and `S` (state, or uint8 codes and float32 scales), every array
            // aligned and of the parameter's shape (the scales one per block), and the written
            // ones not self-overlapping; `CheckedTensor::new`'s contract keeps the memory valid
            // for 'o, which outlives the borrow of `self`.
            with_precision_types!(
                t.precision,
                float | P,
                S,
                M,
                C | {
                    let c = <C as CachedCoefficients>::pick(coefficients);
                    if let Some(work) = unsafe { work::<P, S, M, C>(t, c) } {
                        jobs.push(Job::from(work));
                    }
                },
                blockwise | P,
                C | {
                    let c = <C as CachedCoefficients>::pick(coefficients);
                    if let Some(slices) = unsafe { quantized_work::<P>(t) } {
                        jobs.push(Job::from((slices, c)));
                    }
                }
            );
        }
        let scratch = recycle(std::mem::take(&mut buffers.split));
        Ok(Registered {
            jobs,
            scratch,
            counters,
            registration,
        })
    }
}

fn strided(raw: &RawArray) -> StridedArray<'_> {
    StridedArray {
        address: raw.address,
        strides: &raw.strides,
    }
}

/// The written extents of `tensors`, tagged with their place in the step.
fn written_extents(tensors: &[CheckedTensor<'_>]) -> Vec<(Extent, usize)> {
    let mut written = Vec::with_capacity(3 * tensors.len());
    for (index, t) in tensors.iter().enumerate() {
        for (extent, role) in t.state.written.iter().zip(WRITTEN_ROLES) {
            if let Some(extent) = extent {
                written.push((*extent, ROLES * index + role as usize));
            }
        }
        if let Some(counter) = t.step.counter() {
            written.push((counter.extent(), ROLES * index + Role::Step as usize));
        }
    }
    written
}

/// The lowest address of a non-empty array.
fn start(raw: &RawArray) -> usize {
    raw.extent().map_or(raw.address, |e| e.start)
}

/// The work on one checked tensor; `None` when it has no elements.
///
/// # Safety
/// The tensor's arrays must hold elements of types `P` (param, grad) and `S` (the others), and
/// the caller must hold exclusive access to the written arrays and shared access to the gradient
/// for `'s`, with their memory valid (see [`StepMemory::jobs`]).
unsafe fn work<'s, P, S, M, C>(
    t: &CheckedTensor<'s>,
    c: &'s Coefficients<C>,
) -> Option<Work<'s, P, S, M, C>> {
    if let Some(flat) = t.flat {
        if flat.len == 0 {
            return None;
        }
        let n = flat.len;
        let [param, exp_avg, exp_inf, master, _, _] = flat.starts;
        let grad = t.grad_extent.map_or(0, |e| e.start);
        // SAFETY: every array is dense with the same element order (`TensorState::check`,
        // `CheckedTensor::new`), so its `n` values fill the bytes from its lowest address (its
        // extent's start), in an order shared by all of them; the caller guarantees the rest
        // (types, exclusivity, validity).
        unsafe {
            let slices = TensorSlices {
                param: std::slice::from_raw_parts_mut(param as *mut P, n),
                grad: std::slice::from_raw_parts(grad as *const P, n),
                exp_avg: std::slice::from_raw_parts_mut(exp_avg as *mut S, n),
                exp_inf: std::slice::from_raw_parts_mut(exp_inf as *mut S, n),
                master: t
                    .has_master
                    .then(|| std::slice::from_raw_parts_mut(master as *mut M, n)),
            };
            Some(Work::Flat(slices, c))
        }
    } else {
        let s = t.state;
        if s.param.is_empty() {
            return None;
        }
        let moved;
        let grad = match t.grad {
            GradArray::Other(raw) => raw,
            GradArray::LikeParam { address } => {
                moved = RawArray {
                    address,
                    ..s.param.clone()
                };
                &moved
            }
        };
        let [param, grad, exp_avg, exp_inf] =
            [&s.param, grad, &s.exp_avg, &s.exp_inf].map(RawArray::as_real_pairs);
        let master = s.master.as_ref().map(RawArray::as_real_pairs);
        // SAFETY: each array has the parameter's shape and strides that stay inside its memory
        // (its owner's header); the caller guarantees the rest.
        let tensor = unsafe {
            StridedTensor::new(
                &param.shape,
                strided(&param),
                strided(&grad),
                strided(&exp_avg),
                strided(&exp_inf),
                master.as_ref().map(strided),
            )
        };
        Some(Work::Strided(tensor, c))
    }
}

/// The block work on one checked tensor with 8-bit state; `None` when it has no elements.
///
/// # Safety
/// As [`work`], with the codes `u8`, the scales `f32` and the master copy `f32`.
unsafe fn quantized_work<'s, P>(t: &CheckedTensor<'s>) -> Option<QuantizedSlices<'s, P>> {
    let flat = t.flat?;
    if flat.len == 0 {
        return None;
    }
    let n = flat.len;
    let blocks = n.div_ceil(BLOCK);
    let [param, exp_avg, exp_inf, master, avg_scale, inf_scale] = flat.starts;
    let grad = t.grad_extent.map_or(0, |e| e.start);
    // SAFETY: as in `work`: the parameter, gradient, codes and master copy are dense with one
    // element order, `n` values each from their lowest address; the scales are contiguous,
    // `blocks` float32 each (`TensorState::check`); the caller guarantees the rest.
    unsafe {
        QuantizedSlices::new(
            std::slice::from_raw_parts_mut(param as *mut P, n),
            std::slice::from_raw_parts(grad as *const P, n),
            std::slice::from_raw_parts_mut(exp_avg as *mut u8, n),
            std::slice::from_raw_parts_mut(exp_inf as *mut u8, n),
            std::slice::from_raw_parts_mut(avg_scale as *mut f32, blocks),
            std::slice::from_raw_parts_mut(inf_scale as *mut f32, blocks),
            t.has_master
                .then(|| std::slice::from_raw_parts_mut(master as *mut f32, n)),
        )
        .ok()
    }
}

/// A step's jobs and the registration that makes them sound; `Send`, so it can run with the GIL
/// released.
pub struct Registered<'s> {
    jobs: Vec<Job<'s>>,
    scratch: Vec<Job<'s>>,
    /// The counters to write, and the step number each gets.
    counters: Vec<(StepCounter<'s>, u64)>,
    registration: Registration,
}

/// The emptied vectors of a step that ran, to give back to [`StepBuffers`].
pub struct Spent {
    jobs: Vec<Job<'static>>,
    scratch: Vec<Job<'static>>,
    counters: Vec<(StepCounter<'static>, u64)>,
}

impl Spent {
    /// Puts the vectors back into `buffers`.
    pub fn keep(self, buffers: &mut StepBuffers) {
        buffers.jobs = self.jobs;
        buffers.split = self.scratch;
        buffers.counters = self.counters;
    }
}

impl Registered<'_> {
    /// Runs `rule` over every job (on the pool when large), then releases the claims.
    pub fn run<U: Update>(self, rule: U) -> Spent {
        let Registered {
            mut jobs,
            mut scratch,
            counters,
            registration,
        } = self;
        schedule::run_jobs(&mut jobs, &mut scratch, rule);
        for &(counter, step) in &counters {
            // SAFETY: claimed with the step's written arrays, by the registration held until
            // the line after this loop: no other step uses the count until the release.
            unsafe { counter.write(step) };
        }
        drop(registration);
        Spent {
            jobs: recycle(jobs),
            scratch: recycle(scratch),
            counters: recycle(counters),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{Adamax, Hyperparameters};
    use smallvec::smallvec;

    fn raw(values: &mut [f32]) -> RawArray {
        RawArray {
            address: values.as_mut_ptr() as usize,
            element: Element::Float32,
            shape: smallvec![values.len()],
            strides: smallvec![4],
            writeable: true,
        }
    }

    /// Steps four float32 parameters with their count at `count`, after `meanwhile` has run
    /// between the checks and the registration; the count's conflict, if any, or why no jobs were
    /// made.
    fn step_counting_in(
        param: &mut [f32; 4],
        grad: &mut [f32; 4],
        count: usize,
        meanwhile: impl FnOnce(),
    ) -> Result<Result<(), JobsRefused>, Conflict> {
        let (mut exp_avg, mut exp_inf) = ([0.0f32; 4], [0.0f32; 4]);
        let state =
            TensorState::check(raw(param), raw(&mut exp_avg), raw(&mut exp_inf), None, None)
                .unwrap();
        let grad = raw(grad);
        let mut buffers = StepBuffers::default();
        // SAFETY: every array lives on this stack frame until the end of the function, and only
        // this step (and `meanwhile`, before the step is registered) accesses them meanwhile.
        let tensor = unsafe {
            let counter = StepCounter::new(count, Element::Float32).unwrap();
            CheckedTensor::new(
                &state,
                GradArray::Other(&grad),
                0,
                StepNumber::Counted(counter),
            )
            .unwrap()
        };
        let mut step = StepMemory::new(vec![tensor], &[Hyperparameters::default()], &mut buffers)?;
        meanwhile();
        let registration = Registration::try_new(step.claims()).unwrap();
        let ran = match step.jobs(registration, &mut buffers) {
            Ok(registered) => {
                registered.run(Adamax).keep(&mut buffers);
                Ok(())
            }
            Err(refused) => Err(refused),
        };
        step.finish(&mut buffers);
        Ok(ran)
    }

    /// The first update of Adamax (zero moments) with the default hyperparameters (eps outside
    /// the max) at step number `t`, by the textbook formula in float64.
    fn first_update(param: f32, grad: f32, t: i32) -> f32 {
        let h = Hyperparameters::default();
        let g = f64::from(grad);
        let m = (1.0 - h.beta1) * g;
        let u = g.abs();
        (f64::from(param) - h.lr / (1.0 - h.beta1.powi(t)) * m / (u + h.eps)) as f32
    }

    #[test]
    fn a_count_is_written_with_the_update_and_refused_inside_the_steps_arrays() {
        let (mut param, mut grad, mut count) = ([1.0f32; 4], [0.5f32; 4], [0.0f32]);
        step_counting_in(&mut param, &mut grad, count.as_mut_ptr() as usize, || ())
            .unwrap()
            .unwrap();
        assert_eq!(count, [1.0]);
        assert!(param.iter().all(|&p| p < 1.0), "{param:?}");

        // In the parameter (written) and in the gradient (read): refused, nothing written.
        let before = (param, grad);
        let inside_param = param.as_mut_ptr() as usize + 8;
        let error = step_counting_in(&mut param, &mut grad, inside_param, || ()).unwrap_err();
        assert!(matches!(error, Conflict::WithinStep { .. }), "{error:?}");
        let inside_grad = grad.as_mut_ptr() as usize + 4;
        let error = step_counting_in(&mut param, &mut grad, inside_grad, || ()).unwrap_err();
        let Conflict::WithinStep { first, second } = error else {
            panic!("{error:?}")
        };
        let roles = [Role::of_tag(first).1, Role::of_tag(second).1];
        assert!(
            roles.contains(&Role::Step) && roles.contains(&Role::Grad),
            "{roles:?}"
        );
        assert_eq!((param, grad), before);
    }

    #[test]
    fn a_count_is_read_under_the_claims_and_a_bad_one_changes_nothing() {
        // The count changes between the checks and the registration (as another step sharing it
        // would change it): the step uses the count it finds registered, 4, so it is step 5.
        let (mut param, mut grad, mut count) = ([1.0f32; 4], [0.5f32; 4], [0.0f32]);
        let at = count.as_mut_ptr();
        // SAFETY (the write in the closure): `count` lives for the whole test and no step is
        // registered while the closure runs.
        step_counting_in(&mut param, &mut grad, at as usize, || unsafe {
            at.write(4.0)
        })
        .unwrap()
        .unwrap();
        assert_eq!(count, [5.0]);
        let expected = first_update(1.0, 0.5, 5);
        assert!(
            param.iter().all(|&p| (p - expected).abs() <= 1e-6),
            "{param:?} against {expected}"
        );
        assert!((first_update(1.0, 0.5, 1) - expected).abs() > 1e-4);

        // A count that is no longer a count: refused under the claims, nothing written.
        let before = (param, grad);
        for bad in [f32::NAN, -1.0, 2.5] {
            // SAFETY: as above.
            let ran = step_counting_in(&mut param, &mut grad, at as usize, || unsafe {
                at.write(bad)
            })
            .unwrap();
            assert_eq!(ran, Err(JobsRefused::NotACount { index: 0 }));
            assert_eq!((param, grad), before);
            assert_eq!(count[0].to_bits(), bad.to_bits());
        }
    }
}
