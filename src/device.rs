//! Choosing the backend device among those compiled in.

use anyhow::Result;
use burn::tensor::Device;

/// The backend names compiled into this binary, fastest CPU backend first.
pub fn available() -> Vec<&'static str> {
    let mut names = Vec::new();
    #[cfg(feature = "flex")]
    names.push("flex");
    #[cfg(feature = "ndarray")]
    names.push("ndarray");
    #[cfg(feature = "wgpu")]
    names.push("wgpu");
    #[cfg(feature = "vulkan")]
    names.push("vulkan");
    #[cfg(feature = "metal")]
    names.push("metal");
    #[cfg(feature = "cuda")]
    names.push("cuda");
    #[cfg(feature = "rocm")]
    names.push("rocm");
    names
}

/// The device `name` names, else `BURN_DEVICE`'s, else the first available.
pub fn select(name: Option<&str>) -> Result<Device> {
    let from_env = std::env::var("BURN_DEVICE").ok();
    let Some(name) = name.map(str::to_string).or(from_env) else {
        return by_name(available().first().copied().unwrap_or("none"));
    };
    by_name(&name.to_lowercase())
}

#[allow(deprecated, unreachable_code)]
fn by_name(name: &str) -> Result<Device> {
    let device = match name {
        #[cfg(feature = "flex")]
        "flex" => Device::flex(),
        #[cfg(feature = "ndarray")]
        "ndarray" => Device::ndarray(),
        #[cfg(feature = "wgpu")]
        "wgpu" => Device::wgpu(Default::default()),
        #[cfg(feature = "vulkan")]
        "vulkan" => Device::vulkan(Default::default()),
        #[cfg(feature = "metal")]
        "metal" => Device::metal(Default::default()),
        #[cfg(feature = "cuda")]
        "cuda" => Device::cuda(0),
        #[cfg(feature = "rocm")]
        "rocm" => Device::rocm(0),
        _ => {
            return Err(crate::usage(format!(
                "device `{name}` is not compiled into this binary; available: {} \
                 (rebuild with --features {name} to add it)",
                available().join(", ")
            )));
        }
    };
    Ok(device)
}
