// A tiny web app for trying dropdeploy: it answers "hello" on $PORT.
const http = require("http");
const port = process.env.PORT || 3000;
http
  .createServer((req, res) => res.end("hello from a dropdeploy demo\n"))
  .listen(port);
