//! The command center's alarms: one sound per priority, made here as WAV (8 kHz, 16-bit
//! mono PCM) so nothing is fetched from elsewhere. Normal is one low beep, urgent two higher
//! beeps, critical a two-tone warble; the page plays the one of each live alert's priority.

use std::f64::consts::TAU;
use std::sync::OnceLock;

const RATE: u32 = 8_000;

/// (frequency Hz, milliseconds) steps; frequency 0 is silence.
fn pattern(priority: u8) -> &'static [(f64, u32)] {
    match priority {
        3 => &[
            (1320.0, 120),
            (990.0, 120),
            (1320.0, 120),
            (990.0, 120),
            (1320.0, 120),
            (990.0, 120),
        ],
        2 => &[(880.0, 150), (0.0, 100), (880.0, 150)],
        _ => &[(660.0, 250)],
    }
}

fn render(priority: u8) -> Vec<u8> {
    let mut samples: Vec<i16> = Vec::new();
    for &(freq, ms) in pattern(priority) {
        let n = (RATE * ms / 1000) as usize;
        for i in 0..n {
            // A 5 ms fade at each end, so the tones do not click.
            let edge = (i.min(n - 1 - i) as f64 / (RATE as f64 * 0.005)).min(1.0);
            let v = if freq == 0.0 {
                0.0
            } else {
                (TAU * freq * i as f64 / f64::from(RATE)).sin() * edge * 0.6
            };
            samples.push((v * f64::from(i16::MAX)) as i16);
        }
    }
    let data_len = (samples.len() * 2) as u32;
    let mut wav = Vec::with_capacity(44 + data_len as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&RATE.to_le_bytes());
    wav.extend_from_slice(&(RATE * 2).to_le_bytes()); // bytes per second
    wav.extend_from_slice(&2u16.to_le_bytes()); // block align
    wav.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        wav.extend_from_slice(&s.to_le_bytes());
    }
    wav
}

/// The alarm of `priority` (1 normal, 2 urgent, 3 critical; others: normal), as WAV.
pub fn alarm(priority: u8) -> &'static [u8] {
    static SOUNDS: [OnceLock<Vec<u8>>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let p = priority.clamp(1, 3);
    SOUNDS[usize::from(p - 1)].get_or_init(|| render(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_priority_has_its_own_well_formed_sound() {
        let sounds: Vec<&[u8]> = (1..=3).map(alarm).collect();
        for s in &sounds {
            assert_eq!(&s[..4], b"RIFF");
            assert_eq!(&s[8..16], b"WAVEfmt ");
            let riff = u32::from_le_bytes(s[4..8].try_into().unwrap()) as usize;
            assert_eq!(riff + 8, s.len());
            let data = u32::from_le_bytes(s[40..44].try_into().unwrap()) as usize;
            assert_eq!(data + 44, s.len());
            assert!(s[44..].iter().any(|b| *b != 0), "not silent");
        }
        assert_ne!(sounds[0], sounds[1]);
        assert_ne!(sounds[1], sounds[2]);
        // 250 ms, 400 ms, 720 ms at 8 kHz, 2 bytes a sample.
        assert_eq!(sounds[0].len(), 44 + 2_000 * 2);
        assert_eq!(sounds[2].len(), 44 + 5_760 * 2);
        assert_eq!(alarm(0), alarm(1));
        assert_eq!(alarm(9), alarm(3));
    }
}
