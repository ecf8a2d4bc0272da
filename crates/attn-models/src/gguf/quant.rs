//! Block sizes of the ggml storage types and dequantisation of the common ones to f32.
//!
//! Every quantised type stores its elements in fixed-size blocks of consecutive elements of a
//! row; a block holds one or two f16 factors and packed integers. The formulas, per element `q`
//! of a block (all arithmetic in f32, in this order, so that results match ggml and the Python
//! `gguf` package bit for bit):
//!
//! | type | elements / bytes | layout | value |
//! |---|---|---|---|
//! | Q4_0 | 32 / 18 | `d: f16, qs: [u8; 16]` | `d * (q - 8)` |
//! | Q4_1 | 32 / 20 | `d, m: f16, qs: [u8; 16]` | `d * q + m` |
//! | Q5_0 | 32 / 22 | `d: f16, qh: u32, qs: [u8; 16]` | `d * (q - 16)` |
//! | Q5_1 | 32 / 24 | `d, m: f16, qh: u32, qs: [u8; 16]` | `d * q + m` |
//! | Q8_0 | 32 / 34 | `d: f16, qs: [i8; 32]` | `d * q` |
//! | Q4_K | 256 / 144 | `d, dmin: f16, scales: [u8; 12], qs: [u8; 128]` | `(d * sc) * q - dmin * mn` |
//! | Q5_K | 256 / 176 | `d, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]` | as Q4_K |
//! | Q6_K | 256 / 210 | `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16` | `(d * sc) * (q - 32)` |
//!
//! In the 32-element types the low nibbles of `qs` are elements 0..16 and the high nibbles
//! elements 16..32; the fifth bit of element `j` is bit `j` of `qh`. The K-quants and their
//! sub-block order are documented on the functions below.

use rayon::prelude::*;

use super::GgmlType;

/// Elements per chunk handed to one rayon task.
const CHUNK_ELEMS: usize = 1 << 15;
/// Elements in a K-quant super-block.
const QK_K: usize = 256;

/// Number of elements in one block of `t`, or `None` when unknown.
pub fn block_elems(t: GgmlType) -> Option<usize> {
    use GgmlType::*;
    Some(match t {
        F32 | F16 | BF16 => 1,
        Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 => 32,
        Q2K | Q3K | Q4K | Q5K | Q6K | Q8K => QK_K,
        // i8, i16, i32, i64, f64
        Other(24..=28) => 1,
        Other(_) => return None,
    })
}

/// Number of bytes in one block of `t`, or `None` when unknown.
pub fn block_bytes(t: GgmlType) -> Option<usize> {
    use GgmlType::*;
    Some(match t {
        F32 => 4,
        F16 | BF16 => 2,
        Q4_0 => 18,
        Q4_1 => 20,
        Q5_0 => 22,
        Q5_1 => 24,
        Q8_0 => 34,
        Q8_1 => 36,
        Q2K => 84,
        Q3K => 110,
        Q4K => 144,
        Q5K => 176,
        Q6K => 210,
        Q8K => 292,
        Other(24) => 1,
        Other(25) => 2,
        Other(26) => 4,
        Other(27) | Other(28) => 8,
        Other(_) => return None,
    })
}

/// Whether [`dequantize_into`] decodes `t`.
pub fn supported(t: GgmlType) -> bool {
    use GgmlType::*;
    matches!(t, F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4K | Q5K | Q6K)
}

/// Decodes `bytes`, whole blocks of type `t`, into `out` (one f32 per element), in parallel.
///
/// # Errors
/// A description when `t` is not supported, `bytes` is not a whole number of blocks, or `out`
/// does not have exactly one slot per element.
pub fn dequantize_into(t: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
    let (Some(be), Some(bb)) = (block_elems(t), block_bytes(t)) else {
        return Err(format!("cannot dequantize type {t}"));
    };
    if !supported(t) {
        return Err(format!("cannot dequantize type {t}"));
    }
    if !bytes.len().is_multiple_of(bb) {
        return Err(format!(
            "{} bytes is not a whole number of {t} blocks of {bb} bytes",
            bytes.len()
        ));
    }
    let n_blocks = bytes.len() / bb;
    if out.len() != n_blocks * be {
        return Err(format!(
            "{n_blocks} {t} blocks hold {} elements but the output has {}",
            n_blocks * be,
            out.len()
        ));
    }
    match t {
        GgmlType::F32 => run(bytes, out, be, bb, |b, o| {
            o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }),
        GgmlType::F16 => run(bytes, out, be, bb, |b, o| o[0] = f16(b, 0)),
        GgmlType::BF16 => run(bytes, out, be, bb, |b, o| {
            o[0] = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
        }),
        GgmlType::Q4_0 => run(bytes, out, be, bb, block_q4_0),
        GgmlType::Q4_1 => run(bytes, out, be, bb, block_q4_1),
        GgmlType::Q5_0 => run(bytes, out, be, bb, block_q5_0),
        GgmlType::Q5_1 => run(bytes, out, be, bb, block_q5_1),
        GgmlType::Q8_0 => run(bytes, out, be, bb, block_q8_0),
        GgmlType::Q4K => run(bytes, out, be, bb, block_q4_k),
        GgmlType::Q5K => run(bytes, out, be, bb, block_q5_k),
        GgmlType::Q6K => run(bytes, out, be, bb, block_q6_k),
        _ => return Err(format!("cannot dequantize type {t}")),
    }
    Ok(())
}

/// Applies `f` to every block, with chunks of blocks spread over rayon's pool.
fn run<F>(bytes: &[u8], out: &mut [f32], be: usize, bb: usize, f: F)
where
    F: Fn(&[u8], &mut [f32]) + Sync,
{
    let per_chunk = (CHUNK_ELEMS / be).max(1);
    out.par_chunks_mut(per_chunk * be).zip(bytes.par_chunks(per_chunk * bb)).for_each(|(o, b)| {
        for (ob, bb) in o.chunks_exact_mut(be).zip(b.chunks_exact(bb)) {
            f(bb, ob);
        }
    });
}

#[inline(always)]
fn f16(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

fn block_q4_0(b: &[u8], o: &mut [f32]) {
    let d = f16(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        o[j] = d * ((qs[j] & 0x0F) as i32 - 8) as f32;
        o[j + 16] = d * ((qs[j] >> 4) as i32 - 8) as f32;
    }
}

fn block_q4_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (f16(b, 0), f16(b, 2));
    let qs = &b[4..20];
    for j in 0..16 {
        o[j] = d * (qs[j] & 0x0F) as f32 + m;
        o[j + 16] = d * (qs[j] >> 4) as f32 + m;
    }
}

fn block_q5_0(b: &[u8], o: &mut [f32]) {
    let d = f16(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let lo = (qs[j] & 0x0F) as u32 | ((qh >> j) & 1) << 4;
        let hi = (qs[j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
        o[j] = d * (lo as i32 - 16) as f32;
        o[j + 16] = d * (hi as i32 - 16) as f32;
    }
}

fn block_q5_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (f16(b, 0), f16(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..16 {
        let lo = (qs[j] & 0x0F) as u32 | ((qh >> j) & 1) << 4;
        let hi = (qs[j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
        o[j] = d * lo as f32 + m;
        o[j + 16] = d * hi as f32 + m;
    }
}

fn block_q8_0(b: &[u8], o: &mut [f32]) {
    let d = f16(b, 0);
    for (x, &q) in o.iter_mut().zip(&b[2..34]) {
        *x = d * (q as i8) as f32;
    }
}

/// Scale and minimum of sub-block `j` (0..8) from the 12 packed bytes of Q4_K and Q5_K.
///
/// Sub-blocks 0..4 keep their 6-bit scale in the low 6 bits of byte `j` and their minimum in
/// the low 6 bits of byte `j + 4`. Sub-blocks 4..8 keep the low 4 bits of the scale in the low
/// nibble of byte `j + 4` and of the minimum in its high nibble; the top 2 bits of each come
/// from the top 2 bits of bytes `j - 4` (scale) and `j` (minimum).
#[inline(always)]
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// Q4_K: eight sub-blocks of 32. Each group of 64 elements `g` (0..4) reads the 32 bytes
/// `qs[32g..32g+32]`: their low nibbles are sub-block `2g`, their high nibbles sub-block `2g+1`.
fn block_q4_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (f16(b, 0), f16(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for g in 0..4 {
        let q = &qs[32 * g..32 * g + 32];
        let (sc0, m0) = scale_min_k4(2 * g, scales);
        let (sc1, m1) = scale_min_k4(2 * g + 1, scales);
        let (d0, mn0) = (d * sc0 as f32, dmin * m0 as f32);
        let (d1, mn1) = (d * sc1 as f32, dmin * m1 as f32);
        let out = &mut o[64 * g..64 * g + 64];
        for l in 0..32 {
            out[l] = d0 * (q[l] & 0x0F) as f32 - mn0;
            out[l + 32] = d1 * (q[l] >> 4) as f32 - mn1;
        }
    }
}

/// Q5_K: as Q4_K, plus a fifth bit: for group `g`, bit `2g` of `qh[l]` belongs to element `l`
/// of sub-block `2g` and bit `2g+1` to element `l` of sub-block `2g+1`.
fn block_q5_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (f16(b, 0), f16(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for g in 0..4 {
        let q = &qs[32 * g..32 * g + 32];
        let (sc0, m0) = scale_min_k4(2 * g, scales);
        let (sc1, m1) = scale_min_k4(2 * g + 1, scales);
        let (d0, mn0) = (d * sc0 as f32, dmin * m0 as f32);
        let (d1, mn1) = (d * sc1 as f32, dmin * m1 as f32);
        let out = &mut o[64 * g..64 * g + 64];
        for l in 0..32 {
            let h0 = (qh[l] >> (2 * g)) & 1;
            let h1 = (qh[l] >> (2 * g + 1)) & 1;
            out[l] = d0 * ((q[l] & 0x0F) | h0 << 4) as f32 - mn0;
            out[l + 32] = d1 * ((q[l] >> 4) | h1 << 4) as f32 - mn1;
        }
    }
}

/// Q6_K: sixteen sub-blocks of 16 with signed 8-bit scales. Each half `h` (0..2) of 128
/// elements reads `ql[64h..64h+64]` and `qh[32h..32h+32]`; for `l` in 0..32, element `l` takes
/// the low nibble of `ql[l]`, element `l+32` the low nibble of `ql[l+32]`, element `l+64` the
/// high nibble of `ql[l]`, element `l+96` the high nibble of `ql[l+32]`, and bits 0-1, 2-3, 4-5,
/// 6-7 of `qh[l]` are their top two bits, in that order. Element `i` of the half uses scale
/// `scales[8h + i / 16]`.
fn block_q6_k(b: &[u8], o: &mut [f32]) {
    let d = f16(b, 208);
    for h in 0..2 {
        let ql = &b[64 * h..64 * h + 64];
        let qh = &b[128 + 32 * h..128 + 32 * h + 32];
        let sc = &b[192 + 8 * h..192 + 8 * h + 8];
        let out = &mut o[128 * h..128 * h + 128];
        for l in 0..32 {
            let q = [
                (ql[l] & 0x0F) | (qh[l] & 3) << 4,
                (ql[l + 32] & 0x0F) | ((qh[l] >> 2) & 3) << 4,
                (ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4,
                (ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4,
            ];
            for (k, &qk) in q.iter().enumerate() {
                let i = l + 32 * k;
                let s = d * (sc[i / 16] as i8) as f32;
                out[i] = s * (qk as i32 - 32) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_layouts() {
        // d (2) + nibbles (16), etc.: the byte counts follow from the struct layouts.
        assert_eq!(block_bytes(GgmlType::Q4_0), Some(2 + 16));
        assert_eq!(block_bytes(GgmlType::Q4_1), Some(2 + 2 + 16));
        assert_eq!(block_bytes(GgmlType::Q5_0), Some(2 + 4 + 16));
        assert_eq!(block_bytes(GgmlType::Q5_1), Some(2 + 2 + 4 + 16));
        assert_eq!(block_bytes(GgmlType::Q8_0), Some(2 + 32));
        assert_eq!(block_bytes(GgmlType::Q4K), Some(2 + 2 + 12 + 128));
        assert_eq!(block_bytes(GgmlType::Q5K), Some(2 + 2 + 12 + 32 + 128));
        assert_eq!(block_bytes(GgmlType::Q6K), Some(128 + 64 + 16 + 2));
        assert_eq!(block_elems(GgmlType::Other(1000)), None);
    }

    #[test]
    fn rejects_partial_blocks_and_wrong_output_length() {
        let mut out = vec![0f32; 32];
        assert!(dequantize_into(GgmlType::Q8_0, &[0u8; 33], &mut out).is_err());
        assert!(dequantize_into(GgmlType::Q8_0, &[0u8; 68], &mut out).is_err());
        assert!(dequantize_into(GgmlType::Q2K, &[0u8; 84], &mut vec![0f32; 256]).is_err());
        assert!(dequantize_into(GgmlType::Other(77), &[], &mut []).is_err());
    }

    #[test]
    fn q8_0_and_q4_0_by_hand() {
        // d = 0.5 (f16 0x3800); q_j = j - 16.
        let mut b = vec![0x00, 0x38];
        b.extend((0..32).map(|j| (j as i8 - 16) as u8));
        let mut out = vec![0f32; 32];
        dequantize_into(GgmlType::Q8_0, &b, &mut out).unwrap();
        let want: Vec<f32> = (0..32).map(|j| 0.5 * (j as f32 - 16.0)).collect();
        assert_eq!(out, want);

        // d = 2.0 (0x4000); byte j = low nibble j, high nibble 15 - j.
        let mut b = vec![0x00, 0x40];
        b.extend((0..16u8).map(|j| j | (15 - j) << 4));
        dequantize_into(GgmlType::Q4_0, &b, &mut out).unwrap();
        for j in 0..16 {
            assert_eq!(out[j], 2.0 * (j as f32 - 8.0));
            assert_eq!(out[j + 16], 2.0 * ((15 - j) as f32 - 8.0));
        }
    }

    #[test]
    fn k_scale_unpacking() {
        // Scales 1..=8 and minima 11..=18 for sub-blocks 0..8, packed by hand.
        let sc: [u8; 8] = [1, 2, 3, 4, 45, 46, 47, 48];
        let mn: [u8; 8] = [11, 12, 13, 14, 55, 56, 57, 58];
        let mut s = [0u8; 12];
        for j in 0..4 {
            s[j] = sc[j] | (sc[j + 4] >> 4) << 6;
            s[j + 4] = mn[j] | (mn[j + 4] >> 4) << 6;
            s[j + 8] = (sc[j + 4] & 0x0F) | (mn[j + 4] & 0x0F) << 4;
        }
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &s), (sc[j], mn[j]), "sub-block {j}");
        }
    }
}
