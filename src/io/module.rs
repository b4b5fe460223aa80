//! Any Burn module's float parameters as named tensors, and back: the names are the module's
//! field path joined by dots (`blocks.0.attn.query.weight`), so files are readable by any
//! safetensors tool and independent of Burn's record format.

use crate::backend::ArBackend;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;

use super::safetensors::KeyReport;
use super::source::TensorSource;
use crate::checks::read_f32;
use crate::error::{Error, Result};

/// One named tensor: `(name, shape, row-major values)`.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

struct Collect {
    path: Vec<String>,
    out: Vec<NamedTensor>,
    error: Option<Error>,
}

impl<B: ArBackend> ModuleVisitor<B> for Collect {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.error.is_some() {
            return;
        }
        let t = param.val();
        let shape = t.dims().to_vec();
        match read_f32(t) {
            Ok(v) => self.out.push((self.path.join("."), shape, v)),
            Err(e) => self.error = Some(e),
        }
    }
}

/// Every float parameter of `module` as `(path, shape, values)`, in visiting order.
pub fn module_tensors<B: ArBackend, M: Module<B>>(module: &M) -> Result<Vec<NamedTensor>> {
    let mut c = Collect {
        path: Vec::new(),
        out: Vec::new(),
        error: None,
    };
    module.visit(&mut c);
    match c.error {
        Some(e) => Err(e),
        None => Ok(c.out),
    }
}

struct Load<'a, B: ArBackend> {
    path: Vec<String>,
    report: KeyReport<'a>,
    device: B::Device,
}

impl<B: ArBackend> ModuleMapper<B> for Load<'_, B> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.dims();
        let grad = tensor.is_require_grad();
        let tensor = match self.report.take_data(&self.path.join("."), &shape) {
            Some(data) => Tensor::from_data(data, &self.device).set_require_grad(grad),
            None => tensor,
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// `module` with every float parameter read from `source` by its path (the names
/// [`module_tensors`] writes). The shapes must match; missing, unexpected and mismatched tensors
/// are one [`Error::Checkpoint`] naming them all.
pub fn load_module_tensors<B: ArBackend, M: Module<B>>(
    module: M,
    source: &dyn TensorSource,
    device: &B::Device,
) -> Result<M> {
    let mut load = Load {
        path: Vec::new(),
        report: KeyReport::new(source),
        device: device.clone(),
    };
    let module = module.map(&mut load);
    load.report.finish()?;
    Ok(module)
}
