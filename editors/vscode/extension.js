// The VS Code client of `mtl-dsl lsp`: starts the server over stdio for .mtl files and passes
// the settings mtl.tasks / mtl.input (initializationOptions; the client sends the "mtl" section
// again with workspace/didChangeConfiguration whenever it changes).
const vscode = require("vscode");
const { LanguageClient } = require("vscode-languageclient/node");

let client;

function activate(context) {
  const config = vscode.workspace.getConfiguration("mtl");
  const [command, ...args] = config.get("server.command");
  client = new LanguageClient(
    "mtl-dsl",
    "mtl-dsl language server",
    { command, args },
    {
      documentSelector: [{ scheme: "file", language: "mtl" }],
      initializationOptions: { mtl: { tasks: config.get("tasks"), input: config.get("input") } },
      synchronize: { configurationSection: "mtl" },
    }
  );
  return client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
