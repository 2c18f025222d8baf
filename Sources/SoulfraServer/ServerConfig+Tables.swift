import SoulfraBroker
import SoulfraConfig
import SoulfraGateway

/// The runtime tables the loops use, built from the settings (they belong to the data plane, which the
/// config module does not link).
extension ServerConfig {
    /// The broker's access table: peer tokens and key quotas.
    public var accessTable: AccessTable {
        AccessTable(keys: keys, instanceTokens: instanceTokens, runtimeToken: runtimeToken,
                    vaultToken: vaultToken, gatewayToken: gatewayToken)
    }

    /// The gateway's key table.
    public var keyTable: KeyTable { KeyTable(gatewayKeys) }
}
