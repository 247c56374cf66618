//! `calculate_vm_cloud_properties`: the cheapest instance type with the CPUs and memory asked
//! for, from the general-purpose, compute and memory families (on-demand prices, us-east-1, in
//! thousandths of a cent per hour: only their order matters).

/// (name, vCPUs, MiB of memory, price)
const TYPES: &[(&str, u32, u64, u32)] = &[
    ("t3.nano", 2, 512, 520),
    ("t3.micro", 2, 1024, 1040),
    ("t3.small", 2, 2048, 2080),
    ("t3.medium", 2, 4096, 4160),
    ("t3.large", 2, 8192, 8320),
    ("t3.xlarge", 4, 16384, 16640),
    ("t3.2xlarge", 8, 32768, 33280),
    ("c5.large", 2, 4096, 8500),
    ("c5.xlarge", 4, 8192, 17000),
    ("c5.2xlarge", 8, 16384, 34000),
    ("c5.4xlarge", 16, 32768, 68000),
    ("c5.9xlarge", 36, 73728, 153000),
    ("c5.18xlarge", 72, 147456, 306000),
    ("m5.large", 2, 8192, 9600),
    ("m5.xlarge", 4, 16384, 19200),
    ("m5.2xlarge", 8, 32768, 38400),
    ("m5.4xlarge", 16, 65536, 76800),
    ("m5.8xlarge", 32, 131072, 153600),
    ("m5.16xlarge", 64, 262144, 307200),
    ("m5.24xlarge", 96, 393216, 460800),
    ("r5.large", 2, 16384, 12600),
    ("r5.xlarge", 4, 32768, 25200),
    ("r5.2xlarge", 8, 65536, 50400),
    ("r5.4xlarge", 16, 131072, 100800),
    ("r5.8xlarge", 32, 262144, 201600),
    ("r5.16xlarge", 64, 524288, 403200),
    ("r5.24xlarge", 96, 786432, 604800),
];

/// The cheapest type with at least `cpu` vCPUs and `ram_mb` MiB (fewer vCPUs on a tie).
pub fn smallest_instance_type(cpu: u32, ram_mb: u64) -> Option<&'static str> {
    TYPES
        .iter()
        .filter(|(_, c, m, _)| *c >= cpu && *m >= ram_mb)
        .min_by_key(|(_, c, m, price)| (*price, *c, *m))
        .map(|(name, ..)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cheapest_type_that_fits() {
        assert_eq!(smallest_instance_type(1, 512), Some("t3.nano"));
        assert_eq!(smallest_instance_type(2, 4096), Some("t3.medium"));
        assert_eq!(smallest_instance_type(4, 8192), Some("t3.xlarge"));
        assert_eq!(smallest_instance_type(16, 16384), Some("c5.4xlarge"));
        assert_eq!(smallest_instance_type(8, 65536), Some("r5.2xlarge"));
        assert_eq!(smallest_instance_type(128, 1024), None);
    }
}
