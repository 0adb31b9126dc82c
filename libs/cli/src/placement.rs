//! Where a model runs: `--gpu-layers`, `--rpc`, `--tensor-split` and
//! `--engine`, defined once for `infer` and `serve`
//! (`#[command(flatten)] place: cli::placement::Placement`).

/// The placement flags.
#[derive(clap::Args, Clone, Debug, Default, PartialEq)]
pub struct Placement {
    /// Layers to offload to a GPU (GPU builds): -1 or at least the model's
    /// layer count runs the whole model on the GPU; fewer runs on llama.cpp's
    /// engine, which splits layers between CPU and GPU.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub gpu_layers: i32,
    /// Engine that runs the model [default: native where supported].
    #[arg(long, value_enum)]
    pub engine: Option<Engine>,
    /// Split each model's layers across ggml RPC workers (`infer-worker` on
    /// other machines) and the local CPU, on llama.cpp's engine; in
    /// proportion to free memory unless --tensor-split. A worker that dies
    /// ends the program (exit 2). The protocol has no authentication: reach
    /// workers over a private network or an SSH tunnel.
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT…]", value_delimiter = ',')]
    pub rpc: Vec<String>,
    /// With --rpc: each worker's share of the layers, in --rpc order, then
    /// optionally the local CPU's (absent: everything on the workers),
    /// e.g. 1,1,1.
    #[arg(
        long,
        value_name = "W1,W2…[,LOCAL]",
        value_delimiter = ',',
        requires = "rpc"
    )]
    pub tensor_split: Vec<f32>,
}

/// `--engine`'s values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// Ours (an architecture it lacks is an error).
    Native,
    /// llama.cpp's, in process.
    #[value(name = "llama.cpp")]
    LlamaCpp,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct T {
        #[command(flatten)]
        place: Placement,
    }

    fn parse(args: &[&str]) -> Result<Placement, clap::Error> {
        T::try_parse_from(std::iter::once("t").chain(args.iter().copied())).map(|t| t.place)
    }

    #[test]
    fn test_defaults() {
        assert_eq!(parse(&[]).unwrap(), Placement::default());
    }

    #[test]
    fn test_gpu_layers() {
        assert_eq!(parse(&["--gpu-layers", "-1"]).unwrap().gpu_layers, -1);
        assert_eq!(parse(&["--gpu-layers", "8"]).unwrap().gpu_layers, 8);
        assert!(parse(&["--gpu-layers", "x"]).is_err());
    }

    #[test]
    fn test_engine() {
        assert_eq!(
            parse(&["--engine", "llama.cpp"]).unwrap().engine,
            Some(Engine::LlamaCpp)
        );
        assert_eq!(
            parse(&["--engine", "native"]).unwrap().engine,
            Some(Engine::Native)
        );
        assert!(parse(&["--engine", "ggml"]).is_err());
    }

    #[test]
    fn test_rpc_and_tensor_split() {
        let p = parse(&["--rpc", "a:1,b:2", "--tensor-split", "1,2,0.5"]).unwrap();
        assert_eq!(p.rpc, ["a:1", "b:2"]);
        assert_eq!(p.tensor_split, [1.0, 2.0, 0.5]);
        // --tensor-split needs --rpc
        assert!(parse(&["--tensor-split", "1,1"]).is_err());
    }
}
