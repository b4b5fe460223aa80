//! LoRA adapters for [`Llama`]: attach (base frozen), save/load in PEFT's file layout, merge.

use crate::backend::ArBackend;
use std::collections::HashSet;
use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::{Distribution, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::layers::LoraAdapter;
use super::model::{transpose, Llama, ProjName};
use crate::checks::read_f32;
use crate::error::{Error, Result};
use crate::io::{save_safetensors, write_atomic, KeyReport, SafetensorsFile, StoreDtype};

/// LoRA settings (PEFT's `r`, `lora_alpha`, `target_modules`).
///
/// ```
/// use ar_refine::backbone::{LoraConfig, ProjName};
/// let c = LoraConfig::new(8, 16.0).with_targets(&[ProjName::Q, ProjName::V]);
/// assert_eq!(c.scale(), 2.0);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank `r`.
    pub r: usize,
    /// `alpha`; the update is scaled by `alpha / r`.
    pub lora_alpha: f64,
    /// Projections that get adapters (short names: `q_proj`, ..., `down_proj`).
    pub target_modules: Vec<String>,
}

impl LoraConfig {
    /// Rank `r`, scale numerator `alpha`, targets `q_proj` and `v_proj` (PEFT's LLaMA default).
    pub fn new(r: usize, alpha: f64) -> Self {
        Self {
            r,
            lora_alpha: alpha,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
        }
    }

    /// Sets the target projections.
    pub fn with_targets(mut self, targets: &[ProjName]) -> Self {
        self.target_modules = targets.iter().map(|p| p.short().to_string()).collect();
        self
    }

    /// `alpha / r`.
    pub fn scale(&self) -> f64 {
        self.lora_alpha / self.r as f64
    }

    fn targets(&self) -> Result<Vec<ProjName>> {
        if self.r == 0 || !self.lora_alpha.is_finite() {
            return Err(Error::Config(format!(
                "LoRA needs r >= 1 and a finite alpha, got r {} alpha {}",
                self.r, self.lora_alpha
            )));
        }
        let t: Vec<ProjName> = self
            .target_modules
            .iter()
            .map(|s| ProjName::parse(s))
            .collect::<Result<_>>()?;
        if t.is_empty() {
            return Err(Error::Config("LoRA target_modules is empty".into()));
        }
        Ok(t)
    }
}

/// PEFT's key for one adapter matrix.
fn key(layer: usize, p: ProjName, ab: char) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.lora_{ab}.weight",
        p.hf_path()
    )
}

impl<B: ArBackend> Llama<B> {
    /// Freezes every base weight and attaches fresh adapters to the targets: `A` uniform in
    /// `±1/√in` (PEFT's Kaiming init), `B` zero, so the adapted model starts equal to the base.
    /// Only the adapters then receive gradients. Replaces adapters already attached.
    pub fn with_lora(self, config: &LoraConfig, device: &B::Device) -> Result<Self> {
        let targets = config.targets()?;
        let mut model = self.without_lora().no_grad();
        let c = model.config.clone();
        for l in 0..c.num_hidden_layers {
            for &p in &targets {
                let (i, o) = p.dims(&c);
                let bound = 1.0 / (i as f64).sqrt();
                model.proj_mut(l, p).lora = Some(LoraAdapter {
                    a: Param::from_tensor(Tensor::random(
                        [i, config.r],
                        Distribution::Uniform(-bound, bound),
                        device,
                    )),
                    b: Param::from_tensor(Tensor::zeros([config.r, o], device)),
                    scale: config.scale(),
                });
            }
        }
        Ok(model)
    }

    /// Removes every adapter (the base weights stay as they are).
    pub fn without_lora(mut self) -> Self {
        for l in 0..self.config.num_hidden_layers {
            for p in ProjName::ALL {
                self.proj_mut(l, p).lora = None;
            }
        }
        self
    }

    /// Folds every adapter into its base weight (`W + scale · A B`) and removes it.
    pub fn merge_lora(mut self) -> Self {
        for l in 0..self.config.num_hidden_layers {
            for p in ProjName::ALL {
                let proj = self.proj_mut(l, p);
                if let Some(a) = proj.lora.take() {
                    let delta = a.a.val().matmul(a.b.val()).mul_scalar(a.scale).transpose();
                    proj.weight = Param::from_tensor(proj.weight.val() + delta);
                }
            }
        }
        self
    }

    /// Number of adapter parameters attached.
    pub fn lora_param_count(&self) -> usize {
        let mut n = 0;
        for l in 0..self.config.num_hidden_layers {
            for p in ProjName::ALL {
                if let Some(a) = &self.proj(l, p).lora {
                    n += a.a.val().dims().iter().product::<usize>()
                        + a.b.val().dims().iter().product::<usize>();
                }
            }
        }
        n
    }
}

/// Saves the adapters of `model` to `dir` as PEFT does: `adapter_config.json` and
/// `adapter_model.safetensors` (`lora_A [r, in]`, `lora_B [out, r]`), separate from the base
/// weights. Files are written atomically.
pub fn save_lora<B: ArBackend>(model: &Llama<B>, config: &LoraConfig, dir: impl AsRef<Path>) -> Result<()> {
    let dir = dir.as_ref();
    let targets = config.targets()?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut tensors = Vec::new();
    for l in 0..model.config.num_hidden_layers {
        for &p in &targets {
            let a = model.proj(l, p).lora.as_ref().ok_or_else(|| {
                Error::Config(format!("layer {l} {} has no LoRA adapter to save", p.short()))
            })?;
            let (i, o) = p.dims(&model.config);
            tensors.push((
                key(l, p, 'A'),
                vec![config.r, i],
                transpose(&read_f32(a.a.val())?, i, config.r),
            ));
            tensors.push((
                key(l, p, 'B'),
                vec![o, config.r],
                transpose(&read_f32(a.b.val())?, config.r, o),
            ));
        }
    }
    save_safetensors(dir.join("adapter_model.safetensors"), &tensors, StoreDtype::F32)?;
    let mut json = serde_json::to_value(config).map_err(|e| Error::json("the LoRA config", e))?;
    if let Some(obj) = json.as_object_mut() {
        obj.insert("peft_type".into(), "LORA".into());
        obj.insert("task_type".into(), "CAUSAL_LM".into());
        obj.insert("bias".into(), "none".into());
    }
    let text = serde_json::to_string_pretty(&json).map_err(|e| Error::json("adapter_config.json", e))?;
    write_atomic(dir.join("adapter_config.json"), text.as_bytes())
}

/// Attaches the adapters saved in `dir` ([`save_lora`] or PEFT) to `model` (base frozen).
/// Missing, unexpected or mis-shaped adapter tensors are one [`Error::Checkpoint`].
pub fn load_lora<B: ArBackend>(
    model: Llama<B>,
    dir: impl AsRef<Path>,
    device: &B::Device,
) -> Result<(Llama<B>, LoraConfig)> {
    let dir = dir.as_ref();
    let cfg_path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let config: LoraConfig = serde_json::from_str(&text)
        .map_err(|e| Error::json(format!("{} (a PEFT LoRA adapter config)", cfg_path.display()), e))?;
    let targets: HashSet<ProjName> = config.targets()?.into_iter().collect();
    let file = SafetensorsFile::open(dir.join("adapter_model.safetensors"))?;
    let mut report = KeyReport::new(&file);
    let mut model = model.with_lora(&config, device)?;
    let c = model.config.clone();
    let mut loaded = Vec::new();
    for l in 0..c.num_hidden_layers {
        for p in ProjName::ALL.into_iter().filter(|p| targets.contains(p)) {
            let (i, o) = p.dims(&c);
            let a = report.take(&key(l, p, 'A'), &[config.r, i]);
            let b = report.take(&key(l, p, 'B'), &[o, config.r]);
            if let (Some(a), Some(b)) = (a, b) {
                loaded.push((l, p, i, o, a, b));
            }
        }
    }
    report.finish()?;
    for (l, p, i, o, a, b) in loaded {
        let lora = model
            .proj_mut(l, p)
            .lora
            .as_mut()
            .ok_or_else(|| Error::Config("adapter vanished".into()))?;
        lora.a = Param::from_tensor(Tensor::from_data(
            TensorData::new(transpose(&a, config.r, i), [i, config.r]),
            device,
        ));
        lora.b = Param::from_tensor(Tensor::from_data(
            TensorData::new(transpose(&b, o, config.r), [config.r, o]),
            device,
        ));
    }
    Ok((model, config))
}
