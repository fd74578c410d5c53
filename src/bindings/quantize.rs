//! Converting optimizer state between float and 8-bit block form, with the kernel's own codec:
//! what loading a float32 state dict into an optimizer with 8-bit state (or the reverse) uses.

use numpy::{PyArray1, PyReadonlyArray1, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::kernel::blockwise::{
    decode_signed, decode_unsigned, encode_exp_avg, encode_exp_inf, BLOCK,
};

fn contiguous<'a>(array: &'a PyReadonlyArray1<'_, f64>, what: &str) -> PyResult<&'a [f64]> {
    array
        .as_slice()
        .map_err(|_| PyValueError::new_err(format!("{what} must be a contiguous 1-D array")))
}

/// The 8-bit form of flat float64 moments: ``(exp_avg codes, exp_avg scales, exp_inf codes,
/// exp_inf scales)``, encoded exactly as a step encodes them (``exp_avg`` truncated toward zero,
/// ``exp_inf`` rounded up; one float32 scale per block of 256).
#[pyfunction]
#[allow(clippy::type_complexity)]
pub fn quantize_moments<'py>(
    py: Python<'py>,
    exp_avg: PyReadonlyArray1<'py, f64>,
    exp_inf: PyReadonlyArray1<'py, f64>,
) -> PyResult<(
    Bound<'py, PyArray1<u8>>,
    Bound<'py, PyArray1<f32>>,
    Bound<'py, PyArray1<u8>>,
    Bound<'py, PyArray1<f32>>,
)> {
    super::errors::guarded(|| {
        let (m, u) = (
            contiguous(&exp_avg, "exp_avg")?,
            contiguous(&exp_inf, "exp_inf")?,
        );
        if m.len() != u.len() {
            return Err(PyValueError::new_err(
                "exp_avg and exp_inf differ in length",
            ));
        }
        if u.iter().any(|&x| x < 0.0) {
            return Err(PyValueError::new_err("exp_inf must not be negative"));
        }
        let blocks = m.len().div_ceil(BLOCK);
        let (mut m_codes, mut u_codes) = (vec![0u8; m.len()], vec![0u8; u.len()]);
        let (mut m_scales, mut u_scales) = (vec![0f32; blocks], vec![0f32; blocks]);
        for b in 0..blocks {
            let range = b * BLOCK..((b + 1) * BLOCK).min(m.len());
            m_scales[b] = encode_exp_avg(&m[range.clone()], &mut m_codes[range.clone()]);
            u_scales[b] = encode_exp_inf(&u[range.clone()], &mut u_codes[range]);
        }
        Ok((
            PyArray1::from_vec(py, m_codes),
            PyArray1::from_vec(py, m_scales),
            PyArray1::from_vec(py, u_codes),
            PyArray1::from_vec(py, u_scales),
        ))
    })
}

/// The float32 values that 8-bit moments stand for (what a step reads from them): ``(exp_avg,
/// exp_inf)``, flat.
#[pyfunction]
#[allow(clippy::type_complexity)]
pub fn dequantize_moments<'py>(
    py: Python<'py>,
    exp_avg_codes: PyReadonlyArray1<'py, u8>,
    exp_avg_scales: PyReadonlyArray1<'py, f32>,
    exp_inf_codes: PyReadonlyArray1<'py, u8>,
    exp_inf_scales: PyReadonlyArray1<'py, f32>,
) -> PyResult<(Bound<'py, PyArray1<f32>>, Bound<'py, PyArray1<f32>>)> {
    super::errors::guarded(|| {
        let n = exp_avg_codes.len();
        let blocks = n.div_ceil(BLOCK);
        if exp_inf_codes.len() != n
            || exp_avg_scales.len() != blocks
            || exp_inf_scales.len() != blocks
        {
            return Err(PyValueError::new_err(format!(
                "8-bit moments of {n} elements need {blocks} scales each and codes of one length"
            )));
        }
        let decode = |codes: &PyReadonlyArray1<'py, u8>,
                      scales: &PyReadonlyArray1<'py, f32>,
                      signed: bool| {
            let codes = codes.as_array();
            let scales = scales.as_array();
            codes
                .iter()
                .enumerate()
                .map(|(i, &c)| {
                    let value = if signed {
                        decode_signed(c)
                    } else {
                        decode_unsigned(c)
                    };
                    value * scales[i / BLOCK]
                })
                .collect::<Vec<f32>>()
        };
        let m = decode(&exp_avg_codes, &exp_avg_scales, true);
        let u = decode(&exp_inf_codes, &exp_inf_scales, false);
        Ok((PyArray1::from_vec(py, m), PyArray1::from_vec(py, u)))
    })
}

/// Whether an optimizer with ``state_dtype="8bit"`` keeps 8-bit state for a parameter whose data
/// is ``array`` (a numpy array or a torch tensor): real, at least 4096 elements, and dense (its
/// elements fill its memory in one order). Other parameters keep float32 state.
#[pyfunction]
pub fn blockwise_fits(array: &Bound<'_, PyAny>) -> PyResult<bool> {
    super::errors::guarded(|| {
        let raw = match super::ndarray::read_array(array) {
            Ok(raw) => raw,
            Err(super::ndarray::ArrayProblem::NotAnArray(name)) => {
                let reader = super::dlpack::reader(array.py()).map_err(|_| {
                    pyo3::exceptions::PyTypeError::new_err(format!(
                        "expected a numpy array or a torch tensor, got {name}"
                    ))
                })?;
                match reader.describe(array) {
                    Ok(raw) => raw,
                    Err(_) => return Ok(false),
                }
            }
            Err(_) => return Ok(false),
        };
        Ok(super::policy::blockwise_fits(&raw))
    })
}
